"""The fused Triton kernels (ops/triton/full.py, ops/triton/criss_cross.py) against the float64 reference.

On CPU the kernels run under the Triton interpreter, which must be switched on before Triton is
first imported: ``test_interpreter_suite`` re-runs this file in a fresh pytest process with
``TRITON_INTERPRET=1`` (the other tests here are skipped in a process without it). Sizes are small
and chosen so that tiles are partly filled (W not a power of two, H not a multiple of the rows per
tile). Tests marked ``cuda`` run the compiled kernels on a GPU.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from ppma.ops import can_run, criss_cross_polyline_attention, polyline_attention  # noqa: E402
from ppma.ops import reference  # noqa: E402

from conftest import check_layer_compiles_like_eager, random_decays  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs inside test_interpreter_suite (TRITON_INTERPRET=1)")


@pytest.mark.skipif(INTERPRETED, reason="already the interpreter process")
def test_interpreter_suite():
    """Every ``interpreted`` test below, in a child pytest with TRITON_INTERPRET=1 set before Triton loads."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-m", "not cuda"]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@pytest.fixture(scope="module")
def kernels():
    """The kernel module (built for the interpreter in the child process)."""
    return importlib.import_module("ppma.ops.triton.full")


def _case(B, heads, H, W, d, dv, dtype=torch.float64, decay_scale=2.0):
    q, k, v = (torch.randn(B, heads, H, W, n, dtype=dtype) for n in (d, d, dv))
    la, lb = random_decays(B, heads, H, W, dtype=dtype, scale=decay_scale), random_decays(B, heads, H, W, dtype=dtype, scale=decay_scale)
    return [t.requires_grad_() for t in (q, k, v, la, lb)]


def _fwd_bwd(fn, inputs, grad_out):
    out = fn(*inputs)
    return [out, *torch.autograd.grad(out, inputs, grad_out)]


NAMES = ["out", "dq", "dk", "dv", "dlog_alpha", "dlog_beta"]


@interpreted
@pytest.mark.parametrize(
    "B, heads, H, W, d, dv, tile",
    [
        (2, 2, 5, 7, 8, 8, 16),  # 2 rows per tile, last tile half empty, W padded to 8
        (1, 2, 3, 5, 16, 12, 64),  # one tile for the whole grid, dv != d
        (1, 1, 1, 37, 8, 8, 16),  # a single long row
        (1, 1, 9, 1, 8, 8, 16),  # a single column
    ],
)
def test_forward_and_every_gradient_match_reference_float64(kernels, B, heads, H, W, d, dv, tile):
    inputs = _case(B, heads, H, W, d, dv)
    scale = d**-0.5
    grad_out = torch.randn(B, heads, H, W, dv, dtype=torch.float64)
    got = _fwd_bwd(lambda *a: kernels.full(*a, scale, tile_tokens=tile), inputs, grad_out)
    want = _fwd_bwd(lambda *a: reference.full(*a, scale), inputs, grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


@interpreted
@pytest.mark.parametrize("paths", ["h2v", "v2h"])
def test_single_path_forward_and_every_gradient_match_reference_float64(kernels, paths):
    """One softmax only (the h2v / v2h / rmt masks): the other branch drops out of output and gradients."""
    B, heads, H, W, d, dv = 2, 2, 5, 6, 8, 8
    inputs = _case(B, heads, H, W, d, dv)
    grad_out = torch.randn(B, heads, H, W, dv, dtype=torch.float64)
    got = _fwd_bwd(lambda *a: kernels.full(*a, d**-0.5, paths, tile_tokens=16), inputs, grad_out)
    want = _fwd_bwd(lambda *a: reference.full(*a, d**-0.5, paths), inputs, grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{paths} {name}: {m}")
    both = kernels.full(*[t.detach() for t in inputs], d**-0.5, tile_tokens=16)
    assert (both - got[0]).abs().max() > 1e-3  # a single path is not the average


@interpreted
def test_non_contiguous_inputs_and_dispatch(kernels):
    """q, k, v as the model passes them (head-split permutes) through polyline_attention(backend='triton')."""
    B, H, W, heads, d = 1, 4, 6, 2, 8
    qkv = [torch.randn(B, H, W, heads, d, dtype=torch.float64).permute(0, 3, 1, 2, 4).requires_grad_() for _ in range(3)]
    assert not qkv[0].is_contiguous()
    decays = [random_decays(B, heads, H, W).requires_grad_() for _ in range(2)]
    inputs = [*qkv, *decays]
    grad_out = torch.randn(B, heads, H, W, d, dtype=torch.float64)
    got = _fwd_bwd(lambda *a: polyline_attention(*a, backend="triton"), inputs, grad_out)
    want = _fwd_bwd(lambda *a: polyline_attention(*a, backend="reference"), inputs, grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


@interpreted
def test_float32_long_row_keeps_prefix_sum_accuracy(kernels):
    """A 150-token row with strong decays: prefix sums reach -300; float32 stays within 1e-4 of float64."""
    inputs64 = _case(1, 1, 1, 150, 16, 16, decay_scale=4.0)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    grad_out = torch.randn(1, 1, 1, 150, 16, dtype=torch.float64)
    got = _fwd_bwd(lambda *a: kernels.full(*a, 0.25), inputs32, grad_out.float())
    want = _fwd_bwd(lambda *a: reference.full(*a, 0.25), inputs64, grad_out)
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@interpreted
def test_autocast_runs_products_in_half_precision_and_keeps_decays_float32(kernels):
    """Under fp16 autocast (the interpreter has no bf16) q, k, v go to fp16; decay gradients stay float32."""
    inputs = [t.detach().float().requires_grad_() for t in _case(1, 2, 5, 7, 16, 16)]
    with torch.autocast("cpu", dtype=torch.float16):
        out = kernels.full(*inputs, 0.25)
    grads = torch.autograd.grad(out.sum(), inputs)
    want = reference.full(*inputs, 0.25)
    assert (out - want).abs().max() < 5e-3
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@interpreted
def test_can_run_explains_what_triton_does_not_do(kernels):
    q = torch.randn(1, 1, 2, 3, 8)
    assert can_run("triton", "full", q, needs_grad=True) == (True, "")
    assert can_run("triton", "criss_cross", q, needs_grad=True) == (True, "")
    ok, why = can_run("triton", "full", torch.randn(1, 1, 1, 300, 8), needs_grad=False)
    assert not ok and "300" in why
    assert can_run("triton", "full", torch.randn(1, 1, 300, 2, 8), needs_grad=False)[0]
    assert can_run("triton", "criss_cross", torch.randn(1, 1, 300, 2, 8), needs_grad=False)[0]
    ok, why = can_run("triton", "criss_cross", torch.empty(1, 1, 5000, 2, 8), needs_grad=False)
    assert not ok and "5000x2" in why


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = can_run("triton", "full", torch.randn(1, 1, 2, 3, 8), needs_grad=False)
    assert not ok and "TRITON_INTERPRET=1" in why
    q, k, v = (torch.randn(1, 1, 2, 3, 8) for _ in range(3))
    with pytest.raises(ValueError, match="backend: 'triton' cannot run"):
        polyline_attention(q, k, v, random_decays(1, 1, 2, 3).float(), random_decays(1, 1, 2, 3).float(), backend="triton")


@pytest.fixture(scope="module")
def cc_kernels():
    """The criss-cross module (built for the interpreter in the child process)."""
    return importlib.import_module("ppma.ops.triton.criss_cross")


@interpreted
@pytest.mark.parametrize(
    "B, heads, H, W, d, dv, block, paths",
    [
        (2, 2, 3, 5, 8, 8, 64, "both"),  # one block per line, padded to 16
        (2, 2, 3, 5, 8, 8, 64, "h2v"),
        (1, 2, 7, 4, 4, 12, 64, "both"),  # dv != d, d below the padded 16
        (1, 2, 7, 4, 4, 12, 64, "v2h"),
        (1, 1, 1, 9, 16, 16, 64, "both"),  # a single row: column lines of length 1
        (1, 1, 6, 1, 8, 8, 64, "h2v"),  # a single column
        (1, 1, 2, 37, 8, 8, 16, "both"),  # rows of 37 in three blocks of 16, the last partly filled
        (1, 1, 2, 37, 8, 8, 16, "v2h"),
        (1, 1, 2, 300, 8, 8, 64, "both"),  # rows longer than 256 (five blocks, the last partly filled)
    ],
)
def test_criss_cross_matches_reference_float64(cc_kernels, B, heads, H, W, d, dv, block, paths):
    """Forward and every gradient (q, k, v, log_alpha, log_beta) against ops/reference.py."""
    inputs = _case(B, heads, H, W, d, dv)
    scale = d**-0.5
    grad_out = torch.randn(B, heads, H, W, dv, dtype=torch.float64)
    got = _fwd_bwd(lambda *a: cc_kernels.criss_cross(*a, scale, paths, block=block), inputs, grad_out)
    want = _fwd_bwd(lambda *a: reference.criss_cross(*a, scale, paths), inputs, grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{paths} {name}: {m}")


@interpreted
@pytest.mark.parametrize("paths", ["both", "v2h"])
def test_criss_cross_dispatch_non_contiguous_float32(cc_kernels, paths):
    """Head-split permuted q, k, v in float32 through criss_cross_polyline_attention(backend='triton')."""
    B, H, W, heads, d = 1, 5, 6, 2, 8
    qkv = [torch.randn(B, H, W, heads, d).permute(0, 3, 1, 2, 4).requires_grad_() for _ in range(3)]
    assert not qkv[0].is_contiguous()
    decays = [random_decays(B, heads, H, W).float().requires_grad_() for _ in range(2)]
    inputs = [*qkv, *decays]
    grad_out = torch.randn(B, heads, H, W, d)
    got = _fwd_bwd(lambda *a: criss_cross_polyline_attention(*a, backend="triton", paths=paths), inputs, grad_out)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = criss_cross_polyline_attention
    want = _fwd_bwd(lambda *a: ref(*a, backend="reference", paths=paths), inputs64, grad_out.double())
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@interpreted
def test_criss_cross_autocast_products_half_decay_gradients_float32(cc_kernels):
    """Under fp16 autocast q, k, v go to fp16; the output is close and the decay gradients stay float32."""
    inputs = [t.detach().float().requires_grad_() for t in _case(1, 2, 5, 7, 16, 16)]
    with torch.autocast("cpu", dtype=torch.float16):
        out = cc_kernels.criss_cross(*inputs, 0.25)
    grads = torch.autograd.grad(out.sum(), inputs)
    want = reference.criss_cross(*inputs, 0.25)
    assert (out - want).abs().max() < 5e-3
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@interpreted
def test_model_logits_equal_with_triton_backend(kernels):
    """ppma_nano with its full and criss-cross layers on the kernels: logits equal the cpu backend's (float32)."""
    import timm

    model = timm.create_model("ppma_nano").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        for m in model.modules():
            if getattr(m, "mode", None) in ("full", "criss_cross"):
                m.backend = "triton"
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@interpreted
@pytest.mark.parametrize("mode", ["full", "criss_cross"])
def test_triton_layer_traces_as_one_graph_with_its_gradients(kernels, mode):
    """Under dynamo the kernels are opaque custom ops: one graph, no breaks, the same output and grads as eager."""
    check_layer_compiles_like_eager(mode, "triton")


@pytest.mark.skipif(INTERPRETED, reason="compiles real GPU code; the interpreter process cannot")
def test_kernels_compile_for_h100_without_a_gpu(tmp_path, monkeypatch):
    """Ahead-of-time compile of the six kernels to sm_90 cubins (bf16; full: 4 rows of 16, criss-cross:
    blocks of 64): catches errors that the interpreter does not see (layouts, dtypes, shared memory)
    on a CPU-only machine."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    importlib.import_module("ppma.ops.triton")
    module = sys.modules["ppma.ops.triton.full"]
    inputs = {"Q", "K", "V", "U", "DO"}
    outputs = {"CA", "CB", "P", "OUT", "O1", "LSE", "LSE1", "LSE2", "DELTA", "DEL1", "DEL2",
               "DQ", "DK", "DV_", "DU_", "DCA", "DCB", "DPQ", "DPK"}  # fmt: skip
    full_consts = dict(R_Q=4, R_K=4, WP=16, DP=32, DVP=32, ACC=tl.float32, PREC="tf32")
    line_consts = dict(BM=64, BN=64, DP=32, DUP=64, ACC=tl.float32, PREC="tf32")  # DUP: the [v | Ah v] row pass
    cc = sys.modules["ppma.ops.triton.criss_cross"]
    for fn, consts in [
        *((fn, full_consts) for fn in (module._fwd_kernel, module._bwd_query_kernel, module._bwd_key_kernel)),
        *((fn, line_consts) for fn in (cc._line_fwd_kernel, cc._line_bwd_query_kernel, cc._line_bwd_key_kernel)),
    ]:
        signature = {
            n: "constexpr" if n in consts else "*bf16" if n in inputs else "*fp32" if n in outputs else "fp32" if n == "scale" else "i32"
            for n in fn.arg_names
        }  # fmt: skip
        kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=GPUTarget("cuda", 90, 32))
        assert "cubin" in kernel.asm and kernel.metadata.shared < 227 * 1024


def _same_precision_reference(q, k, v, log_alpha, log_beta, scale):
    """PyTorch in the kernel's precision: products in q's dtype, mask and softmax in float32."""
    from ppma.masks.polyline import unchecked_polyline_log_mask

    B, heads, H, W, _ = q.shape
    q, k, v = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)).float() * scale
    mask = unchecked_polyline_log_mask(log_alpha, log_beta)
    attn = 0.5 * torch.softmax(scores + mask, -1) + 0.5 * torch.softmax(scores + mask.mT, -1)
    return (attn.to(v.dtype) @ v).float().reshape(B, heads, H, W, -1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H, W", [(14, 14), (7, 13), (1, 200), (33, 64)])
def test_cuda_kernel_matches_reference(H, W, dtype):
    """Compiled kernel on a GPU: error at most ~2x that of the reference run in the same dtype (float32 reference)."""
    if INTERPRETED:
        pytest.skip("interpreter mode is set for this process")
    from ppma.ops.triton.full import full

    B, heads, d = 2, 4, 32
    base = [t.cuda() for t in _case(B, heads, H, W, d, d, dtype=torch.float32)]
    grad_out = torch.randn(B, heads, H, W, d, device="cuda")
    exact = _fwd_bwd(lambda *a: reference.full(*a, d**-0.5), [t.detach().double().requires_grad_() for t in base], grad_out.double())
    low = [t.detach().to(dtype if i < 3 else torch.float32).requires_grad_() for i, t in enumerate(base)]
    got = _fwd_bwd(lambda *a: full(*a, d**-0.5), low, grad_out)
    ref_low = _fwd_bwd(lambda *a: _same_precision_reference(*a, d**-0.5), low, grad_out)
    for name, g, r, e in zip(NAMES, got, ref_low, exact):
        err = (g.double() - e).abs().max().item()
        ref_err = (r.double() - e).abs().max().item()
        assert err <= 2 * ref_err + 1e-5, f"{name}: kernel error {err:.3g} vs reference error {ref_err:.3g}"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("H, W", [(14, 14), (7, 13), (1, 200), (56, 56), (130, 3)])
def test_cuda_criss_cross_matches_reference_float32(H, W):
    """Compiled line-attention kernels on a GPU, float32 (IEEE products): forward and every gradient."""
    if INTERPRETED:
        pytest.skip("interpreter mode is set for this process")
    from ppma.ops.triton.criss_cross import criss_cross

    B, heads, d = 2, 4, 32
    base = [t.cuda() for t in _case(B, heads, H, W, d, d, dtype=torch.float32)]
    grad_out = torch.randn(B, heads, H, W, d, device="cuda")
    base64 = [t.detach().double().requires_grad_() for t in base]
    exact = _fwd_bwd(lambda *a: reference.criss_cross(*a, d**-0.5), base64, grad_out.double())
    got = _fwd_bwd(lambda *a: criss_cross(*a, d**-0.5), base, grad_out)
    for name, g, e in zip(NAMES, got, exact):
        torch.testing.assert_close(g.double(), e, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")


@interpreted
def test_unmasked_attention_runs_on_triton_like_plain_softmax(kernels):
    """Mask ``none`` on the triton backend: the fused full kernel with zero log-decays, forward and gradients."""
    from ppma.ops import unmasked_attention

    q, k, v = _case(1, 2, 3, 5, 4, 3)[:3]
    grad_out = torch.randn(1, 2, 3, 5, 3, dtype=torch.float64)
    got = _fwd_bwd(lambda *a: unmasked_attention(*a, backend="triton"), [q, k, v], grad_out)
    want = _fwd_bwd(lambda *a: unmasked_attention(*a, backend="reference"), [q, k, v], grad_out)
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
