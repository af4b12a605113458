"""Backend equivalence: every CPU backend against the float64 reference, forward and every gradient.

One helper runs the reference once per case (forward and backward in float64); each backend is then
compared on the output and the gradients to q, k, v and both log-decays. The Triton kernel has its
own module (tests/test_triton.py, interpreter in a child process). Model-level: equal logits with
every backend, bf16 autocast close to float32, channels-last input, and no graph breaks in the
attention under torch.compile.
"""

from __future__ import annotations

import pytest
import timm
import torch

from ppma.ops import Backend, can_run, choose_backend, criss_cross_polyline_attention, polyline_attention

from conftest import check_layer_compiles_like_eager, random_decays

NAMES = ["out", "dq", "dk", "dv", "dlog_alpha", "dlog_beta"]
OPS = {"full": polyline_attention, "criss_cross": criss_cross_polyline_attention}
# (B, heads, H, W, d, dv): non-square, not multiples of any block size, a long single row, a column
SHAPES = [(2, 2, 5, 7, 8, 8), (1, 3, 4, 4, 16, 12), (1, 1, 1, 61, 8, 8), (1, 2, 9, 1, 8, 4)]


def _run(op, backend, inputs, grad_out, **kw):
    out = OPS[op](*inputs, backend=backend, **kw)
    return [out, *torch.autograd.grad(out, inputs, grad_out)]


def _case(B, heads, H, W, d, dv, dtype=torch.float64):
    q, k, v = (torch.randn(B, heads, H, W, n, dtype=dtype) for n in (d, d, dv))
    decays = [random_decays(B, heads, H, W, dtype=dtype) for _ in range(2)]
    return [t.requires_grad_() for t in (q, k, v, *decays)], torch.randn(B, heads, H, W, dv, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", ["full", "criss_cross"])
@pytest.mark.parametrize("backend", ["dense", "cpu"])
def test_backend_matches_reference_float64(backend, op, shape):
    inputs, grad_out = _case(*shape)
    want = _run(op, "reference", inputs, grad_out)
    got = _run(op, backend, inputs, grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{backend} {op} {name}: {m}")


@pytest.mark.parametrize("op, budget", [("full", 4 * 8 * 2 * 7 * 35), ("criss_cross", 8 * 5 * 7 * 12)])
def test_cpu_backend_in_slices_matches_reference_float64(monkeypatch, op, budget):
    """Above the score budget the cpu backend runs query-row blocks (full: 2 grid rows of 5, the last one
    partial) or one (batch, head) pair at a time (criss-cross); forward and every gradient unchanged."""
    from ppma.ops import cpu

    monkeypatch.setattr(cpu, "MAX_SCORE_BYTES", budget)
    inputs, grad_out = _case(2, 2, 5, 7, 8, 6)
    want = _run(op, "reference", inputs, grad_out)
    got = _run(op, "cpu", inputs, grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{op} {name}: {m}")


@pytest.mark.parametrize("paths", ["both", "h2v", "v2h"])
@pytest.mark.parametrize("op", ["full", "criss_cross"])
def test_cpu_inference_in_place_matches_reference_float64(monkeypatch, op, paths):
    """Without gradients the cpu backend reuses its score buffers in place: same outputs as the float64
    reference and as the recorded (autograd) path, whole and in slices; the inputs are left untouched."""
    from ppma.ops import cpu

    fn = OPS[op]
    budgets = [cpu.MAX_SCORE_BYTES, 4 * 8 * 2 * 7 * 35 if op == "full" else 8 * 5 * 7 * 12]
    for shape in [*SHAPES, (2, 2, 5, 7, 8, 6)]:
        inputs, _ = _case(*shape)
        inputs = [t.detach() for t in inputs]
        before = [t.clone() for t in inputs]
        want = fn(*inputs, backend="reference", paths=paths)
        recorded = fn(*[t.clone().requires_grad_() for t in inputs], backend="cpu", paths=paths)
        for budget in budgets:
            monkeypatch.setattr(cpu, "MAX_SCORE_BYTES", budget)
            with torch.no_grad():
                got = fn(*inputs, backend="cpu", paths=paths)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got, recorded.detach(), rtol=1e-12, atol=1e-14)
        for t, b in zip(inputs, before, strict=True):
            assert torch.equal(t, b)


@pytest.mark.parametrize("op", ["full", "criss_cross"])
def test_cpu_inference_path_compiles_as_one_graph(op):
    """The in-place inference ops (``baddbmm_``, softmax written over its input) trace with fullgraph=True under
    torch.compile (for_inference(..., compile=True)) and give eager's output."""
    import torch._dynamo

    inputs = [t.detach().float() for t in _case(2, 2, 5, 7, 8, 6)[0]]

    def fn(*a):
        return OPS[op](*a, backend="cpu", check_values=False)

    with torch.no_grad():
        want = fn(*inputs)
        torch._dynamo.reset()
        got = torch.compile(fn, backend="aot_eager", fullgraph=True)(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["dense", "cpu"])
def test_float32_backends_match_float64_reference(backend):
    inputs, grad_out = _case(2, 2, 6, 11, 16, 16)
    want = _run("full", "reference", inputs, grad_out)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs]
    got = _run("full", backend, inputs32, grad_out.float())
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("paths", ["both", "h2v", "v2h"])
def test_flex_forward_matches_reference_on_cpu(paths):
    """FlexAttention runs forward only on CPU (its backward is CUDA-only); float32; single paths too."""
    inputs = [t.detach() for t in _case(1, 2, 5, 7, 16, 16, dtype=torch.float32)[0]]
    with torch.no_grad():
        got = polyline_attention(*inputs, backend="flex", paths=paths)
        want = polyline_attention(*inputs, backend="reference", paths=paths)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if paths != "both":  # a single path is not the average: the test would notice a dropped `paths`
        other = polyline_attention(*inputs, backend="reference")
        assert (got - other).abs().max() > 1e-4


def test_auto_picks_cpu_backend_on_cpu(monkeypatch):
    monkeypatch.delenv("PPMA_BACKEND", raising=False)
    q = torch.randn(1, 1, 3, 3, 8)
    for op in ("full", "criss_cross"):
        assert choose_backend(op, q, needs_grad=True).value == "cpu"
        assert can_run("cpu", op, q, needs_grad=True) == (True, "")
    # forward only, at any size: cpu's cache-sized slices beat SDPA with a stored mask (BENCHMARKS.md), and
    # a 2048x2048 input's stage 3 (128x128 tokens) would store 8 GiB of masks in dense
    for side in (32, 128):
        large = torch.empty(1, 8, side, side, 8)
        for op in ("full", "criss_cross"):
            assert choose_backend(op, large, needs_grad=False).value == "cpu"
            assert choose_backend(op, large, needs_grad=True).value == "cpu"


def test_auto_on_cuda_sends_large_decomposed_attention_to_triton(monkeypatch):
    """Decided from shapes alone, so a stand-in for a CUDA tensor suffices on a CPU machine."""
    from types import SimpleNamespace

    from ppma.ops import backends

    monkeypatch.delenv("PPMA_BACKEND", raising=False)
    monkeypatch.setattr(backends, "TRITON_INSTALLED", True)

    def cuda_q(B, heads, H, W):
        return SimpleNamespace(device=torch.device("cuda"), shape=(B, heads, H, W, 16), dtype=torch.bfloat16)

    assert choose_backend("criss_cross", cuda_q(128, 4, 56, 56), needs_grad=True).value == "dense"  # 0.7 GiB of masks
    assert choose_backend("criss_cross", cuda_q(1, 4, 512, 512), needs_grad=False).value == "triton"  # 4 GiB
    assert choose_backend("criss_cross", cuda_q(1, 4, 512, 300), needs_grad=False).value == "triton"
    assert choose_backend("criss_cross", cuda_q(1, 4, 8192, 64), needs_grad=False).value == "dense"  # columns > 4096
    assert choose_backend("full", cuda_q(2, 8, 64, 64), needs_grad=True).value == "triton"
    monkeypatch.setattr(backends, "TRITON_INSTALLED", False)
    assert choose_backend("criss_cross", cuda_q(1, 4, 512, 512), needs_grad=False).value == "dense"


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    model = timm.create_model("ppma_nano").eval()
    for p in model.parameters():  # trained-like magnitudes, so that backends differ if they can
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_model_logits_equal_with_every_backend(nano):
    x = torch.randn(2, 3, 32, 32)
    logits = {}
    with torch.no_grad():
        for backend in ("reference", "dense", "cpu", "auto"):
            nano.set_backend(backend)
            logits[backend] = nano(x)
    nano.set_backend("auto")
    for backend, got in logits.items():
        torch.testing.assert_close(got, logits["reference"], rtol=1e-4, atol=1e-4, msg=lambda m: f"{backend}: {m}")


def test_bf16_autocast_logits_close_to_float32_and_decays_stay_float32(nano):
    x = torch.randn(2, 3, 32, 32)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.extend(t.dtype for t in o)) for m in nano.modules()
             if type(m).__name__ == "PathDecay"]  # fmt: skip
    try:
        with torch.no_grad():
            want = nano(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = nano(x)
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(dt == torch.float32 for dt in seen)
    assert torch.isfinite(got).all()
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err < 0.05, f"bf16 logits differ from float32 by {err:.3g} (relative to max logit)"


def _bf16_prefix_sum_decays(log_decay: torch.Tensor, dim: int) -> torch.Tensor:
    """Log-decays whose exact prefix sums are the bf16-accumulated ones: what a bf16 cumsum would feed the mask."""
    cum = torch.cumsum(log_decay.bfloat16(), dim=dim).double()
    return torch.diff(cum, dim=dim, prepend=torch.zeros_like(cum.narrow(dim, 0, 1)))


@pytest.mark.parametrize("grid", [(3, 512), (512, 3)], ids=["rows512", "cols512"])
@pytest.mark.parametrize("op", ["full", "criss_cross"])
@pytest.mark.parametrize("backend", ["reference", "dense", "cpu"])
def test_bf16_autocast_keeps_prefix_sums_float32_on_512_token_lines(backend, op, grid):
    """bf16 q, k, v under autocast match the float64 op on the same values; a bf16 prefix sum would not.

    The control shows the tolerance can fail: prefix sums accumulated in bf16 (ulp 0.125 at |P| ~ 25)
    move the output by orders of magnitude more than the float32 arithmetic of the backends does.
    """
    H, W = grid
    q, k, v = (torch.randn(1, 2, H, W, 16).bfloat16() for _ in range(3))
    log_alpha, log_beta = (-(0.01 + 0.09 * torch.rand(1, 2, H, W)) for _ in range(2))  # |P| up to ~50 over 512
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = OPS[op](q, k, v, log_alpha, log_beta, backend=backend)
    exact = [t.double() for t in (q, k, v)]
    want = OPS[op](*exact, log_alpha.double(), log_beta.double(), backend="reference")
    bf16_sums = OPS[op](*exact, _bf16_prefix_sum_decays(log_alpha, -1), _bf16_prefix_sum_decays(log_beta, -2),
                        backend="reference")  # fmt: skip
    # the output comes back in bf16: within one bf16 ulp of the exact value (float32 inside can flip a rounding)
    tolerance = 2**-8 * want.abs() + 1e-6 * want.abs().max()
    off = ((got.double() - want).abs() > tolerance).float().mean().item()
    control = ((bf16_sums - want).abs() > tolerance).float().mean().item()
    assert torch.isfinite(got).all() and off == 0, f"{backend} {op}: {off:.1%} of outputs off by more than a bf16 ulp"
    assert control > 0.2, f"control: bf16 prefix sums put only {control:.1%} of outputs off by more than a bf16 ulp"


def test_bf16_autocast_is_finite_and_close_to_float32_at_2048x2048():
    """Lines of 512 tokens at stage 1: a bf16 prefix sum of the log-decays would be wrong in the second digit.

    A narrow PPMA (one head in stage 1) keeps the stored row and column scores of stage 1 to 512 MB each;
    the grids, line lengths and mask code are those of any PPMA at this input.
    """
    torch.manual_seed(0)
    model = timm.create_model("ppma_nano", embed_dims=(8, 16, 32, 64), num_heads=(1, 1, 2, 4), depths=(1, 1, 1, 1))
    for p in model.parameters():  # trained-like magnitudes: logits well above rounding noise
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 3, 2048, 2048)
    with torch.inference_mode():
        want = model.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert torch.isfinite(got).all()
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err < 0.05, f"bf16 logits differ from float32 by {err:.3g} (relative to max logit) at 2048x2048"


def test_channels_last_input_gives_same_logits(nano):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = nano(x)
        got = nano(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "criss_cross"])
def test_attention_layer_traces_without_graph_breaks(mode):
    """One attention layer on CPU (auto backend): one graph, no breaks; compiled forward and gradients equal eager."""
    check_layer_compiles_like_eager(mode, "auto")


def test_whole_model_traces_as_one_graph_in_train_and_eval():
    """The full forward (stem, every stage's rotary tables, both attention kinds, head): one graph, no breaks;
    a training step's compiled forward and backward graphs give eager's logits and gradients."""
    torch._dynamo.reset()
    model = timm.create_model("ppma_nano")
    for p in model.parameters():  # trained-like magnitudes: every gradient well above rounding
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 64, 64)
    for train in (True, False):
        explanation = torch._dynamo.explain(model.train(train))(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    want = model(x)
    want_grads = torch.autograd.grad(want.square().sum(), params)
    got = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    got_grads = torch.autograd.grad(got.square().sum(), params)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("op", ["full", "criss_cross"])
@pytest.mark.parametrize("paths", ["h2v", "v2h"])
def test_single_paths_run_on_cpu_like_the_float64_reference(op, paths):
    """One path on the cpu backend (never a stored N x N mask), forward and every gradient."""
    from ppma.ops import criss_cross_polyline_attention, polyline_attention

    fn = polyline_attention if op == "full" else criss_cross_polyline_attention
    B, heads, H, W, d = 2, 2, 4, 5, 6
    q, k, v = (torch.randn(B, heads, H, W, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    log_alpha, log_beta = (random_decays(B, heads, H, W).requires_grad_() for _ in range(2))
    inputs = (q, k, v, log_alpha, log_beta)
    got = fn(*inputs, backend="cpu", paths=paths)
    want = fn(*inputs, backend="reference", paths=paths)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, fn(*inputs, backend="reference"))  # one path is not the average
    cot = torch.randn_like(got)
    for g, w in zip(torch.autograd.grad(got, inputs, cot), torch.autograd.grad(want, inputs, cot)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    assert choose_backend(op, q, needs_grad=True, paths=paths) == Backend.CPU  # auto: cpu, as for both paths


@pytest.mark.parametrize("backend", ["reference", "dense", "cpu", "auto"])
def test_unmasked_attention_is_plain_softmax_on_every_backend(backend):
    from ppma.ops import unmasked_attention

    B, heads, H, W, d = 2, 3, 3, 4, 5
    q, k, v = (torch.randn(B, heads, H, W, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    got = unmasked_attention(q, k, v, scale=0.7, backend=backend)
    seq = [t.reshape(B, heads, H * W, d) for t in (q, k, v)]
    want = (torch.softmax(seq[0] @ seq[1].mT * 0.7, -1) @ seq[2]).reshape(B, heads, H, W, d)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    cot = torch.randn_like(got)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), cot), torch.autograd.grad(want, (q, k, v), cot)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mask, mode, op, paths", [
    ("none", "full", "unmasked", "both"), ("rmt", "full", "full", "h2v"), ("h2v", "full", "full", "h2v"),
    ("none", "criss_cross", "criss_cross", "both"), ("hilbert", "full", "log_masks", "both"),
])  # fmt: skip
def test_the_mask_kind_names_the_op_and_the_layer_runs_it_on_its_backend(mask, mode, op, paths, monkeypatch):
    from ppma.layers import FlatRotary, PolylineAttention
    from ppma.masks import get_mask
    from ppma.ops import cpu

    assert get_mask(mask).op(mode) == (op, paths)
    layer = PolylineAttention(16, 2, mode=mode, mask=mask, backend="reference").double()
    x, rotary = torch.randn(1, 3, 4, 16, dtype=torch.float64), FlatRotary(8).double()(3, 4)
    want = layer(x, rotary)
    if op != "log_masks":  # the layer honours its backend: cpu runs it, and gives the reference's output
        layer.backend = "cpu"
        called = []
        name = {"unmasked": "unmasked", "full": "full", "criss_cross": "criss_cross"}[op]
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, **kw: called.append(1) or real(*a, **kw))
        torch.testing.assert_close(layer(x, rotary), want, rtol=1e-10, atol=1e-12)
        assert called
