"""The mask zoo (ppma.masks): every kind against a naive walk, scan orders, the zoo inside PPMA."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from conftest import random_decays
from naive import naive_polyline_log_mask

import ppma
from ppma.decay import FixedDecay
from ppma.layers import PolylineAttention
from ppma.masks import (
    MASKS,
    column_order,
    get_mask,
    hilbert_order,
    raster_order,
    rmt_log_gamma,
    scan_order,
    zoo_log_masks,
    zoo_query_maps,
    zorder_order,
)
from ppma.ops import criss_cross_polyline_attention, log_mask_attention, polyline_attention

GRIDS = [(1, 1), (1, 6), (5, 1), (4, 4), (3, 5), (7, 13), (8, 8)]
SCAN_KINDS = [name for name, kind in MASKS.items() if kind.full_only]


# ---- naive definitions ------------------------------------------------------------------------------


def naive_scan_log_mask(
    log_alpha: torch.Tensor, log_beta: torch.Tensor, order: list[int], W: int, along: str
) -> torch.Tensor:
    """Walk the scan from one token to the other, adding the decay of each step entered (plain Python floats)."""
    B, heads, H, _ = log_alpha.shape
    N = H * W
    pos = {tok: t for t, tok in enumerate(order)}
    out = torch.zeros(B, heads, N, N, dtype=torch.float64)
    for bh in range(B * heads):
        a = log_alpha.reshape(B * heads, H, W)[bh].tolist()
        b = log_beta.reshape(B * heads, H, W)[bh].tolist()
        for p in range(N):
            for q in range(N):
                lo, hi = sorted((pos[p], pos[q]))
                total = 0.0
                for t in range(lo + 1, hi + 1):
                    prev, cur = order[t - 1], order[t]
                    i, j = divmod(cur, W)
                    if along == "row":
                        total += a[i][j] if prev // W == i else b[i][j]
                    else:
                        total += b[i][j] if prev % W == j else a[i][j]
                out.view(B * heads, N, N)[bh, p, q] = total
    return out


def naive_zoo(name: str, log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """The zoo's definitions written from the issue's words, one path or scan walk at a time."""
    B, heads, H, W = log_alpha.shape
    if name == "none":
        return [torch.zeros(B, heads, H * W, H * W, dtype=torch.float64)]
    if name == "rmt":  # log(gamma) * (|i - k| + |j - l|), log_alpha holds the constant log(gamma)
        idx = torch.tensor([(n // W, n % W) for n in range(H * W)], dtype=torch.float64)
        manhattan = (idx[:, None, :] - idx[None, :, :]).abs().sum(-1)
        return [log_alpha[:, :, :1, :1] * manhattan]
    if name in ("polyline", "h2v", "v2h", "polyline_shared"):
        beta = log_alpha if name == "polyline_shared" else log_beta
        m = naive_polyline_log_mask(log_alpha, beta)
        return {"h2v": [m], "v2h": [m.mT]}.get(name, [m, m.mT])
    row_major = [i * W + j for i in range(H) for j in range(W)]
    col_major = [i * W + j for j in range(W) for i in range(H)]
    if name == "raster":
        return [naive_scan_log_mask(log_alpha, log_beta, row_major, W, "row")]
    if name == "cross_scan":
        return [naive_scan_log_mask(log_alpha, log_beta, row_major, W, "row"),
                naive_scan_log_mask(log_alpha, log_beta, col_major, W, "column")]  # fmt: skip
    order = {"hilbert": hilbert_order, "zorder": zorder_order}[name](H, W).tolist()
    return [naive_scan_log_mask(log_alpha, log_beta, order, W, "row")]


# ---- every kind against its naive definition ----------------------------------------------------------


@pytest.mark.parametrize("H,W", [(1, 1), (1, 6), (5, 1), (4, 4), (3, 5), (2, 7)])
@pytest.mark.parametrize("name", list(MASKS))
def test_zoo_log_masks_equal_the_naive_walk(name, H, W):
    log_alpha, log_beta = random_decays(2, 2, H, W), random_decays(2, 2, H, W)
    if name == "rmt":  # constant per head, as FixedDecay gives
        log_alpha = log_beta = rmt_log_gamma(2)[None, :, None, None].expand(2, 2, H, W)
    got = get_mask(name).log_masks(log_alpha, log_beta)
    want = naive_zoo(name, log_alpha, log_beta)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
        assert (g <= 0).all() and torch.equal(torch.diagonal(g, dim1=-2, dim2=-1), torch.zeros_like(g[..., 0]))


def test_rmt_log_gamma_is_rmts_formula_and_equals_the_polyline_mask_with_constant_decays():
    heads, init_value, heads_range = 8, 2.0, 6.0
    want = [math.log(1 - 2 ** (-init_value - heads_range * h / heads)) for h in range(heads)]
    torch.testing.assert_close(rmt_log_gamma(heads, init_value, heads_range), torch.tensor(want, dtype=torch.float64))
    log_alpha, log_beta = FixedDecay(heads, init_value, heads_range)(torch.randn(1, 3, 4, 16, dtype=torch.float64))
    (m,) = get_mask("rmt").log_masks(log_alpha.double(), log_beta.double())
    manhattan = naive_zoo("rmt", log_alpha.double(), log_beta.double())[0]
    torch.testing.assert_close(m, manhattan, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, m.mT)  # symmetric: one softmax is the two-path average


def test_zoo_log_masks_for_pictures_use_the_given_decays_and_check_them():
    a, b = random_decays(3, 4), random_decays(3, 4)
    (m,) = zoo_log_masks("h2v", 3, 4, a, b)
    torch.testing.assert_close(m, naive_polyline_log_mask(a[None, None], b[None, None])[0, 0])
    assert len(zoo_log_masks("cross_scan", 3, 4)) == 2 and len(zoo_log_masks("polyline", 2, 5)) == 2
    with pytest.raises(ValueError, match="log_alpha: expected shape"):
        zoo_log_masks("polyline", 3, 5, a, b)
    with pytest.raises(ValueError, match="valid masks are 'none', 'polyline'"):
        zoo_log_masks("spiral", 3, 4)


# ---- scan orders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("H,W", GRIDS + [(2, 7), (6, 9), (16, 16), (5, 12)])
@pytest.mark.parametrize("order_fn", [raster_order, column_order, hilbert_order, zorder_order])
def test_scan_orders_are_permutations_of_the_grid(order_fn, H, W):
    order = order_fn(H, W)
    assert torch.equal(order.sort().values, torch.arange(H * W))


@pytest.mark.parametrize("H,W", [(1, 1), (1, 9), (9, 1), (2, 2), (4, 4), (8, 8), (16, 16), (3, 5), (6, 9), (4, 7), (7, 4),
                                 (2, 7), (5, 12), (13, 7)])  # fmt: skip
def test_hilbert_steps_between_grid_neighbours_where_the_curve_allows(H, W):
    order = hilbert_order(H, W)
    i, j = order // W, order % W
    di, dj = (i[1:] - i[:-1]).abs(), (j[1:] - j[:-1]).abs()
    assert all(step <= 1 for step in torch.maximum(di, dj).tolist())  # never a jump
    diagonal = int(((di + dj) == 2).sum())
    # A unit-step curve exists unless the longer side is odd and the shorter even: then one diagonal step at most.
    allowed = 1 if max(H, W) % 2 == 1 and min(H, W) % 2 == 0 else 0
    assert diagonal <= allowed
    if H == W and H & (H - 1) == 0:  # 2^k x 2^k: the classical Hilbert curve, unit steps only
        assert diagonal == 0 and int(i[-1]) == 0 and int(j[-1]) == W - 1


@pytest.mark.parametrize("H,W", [(1, 7), (6, 1), (4, 4), (8, 8), (5, 7), (16, 12)])
def test_zorder_is_the_morton_order_and_keeps_aligned_blocks_contiguous(H, W):
    order = zorder_order(H, W).tolist()

    def morton(i: int, j: int) -> int:
        code = 0
        for b in range(8):
            code |= ((j >> b) & 1) << (2 * b) | ((i >> b) & 1) << (2 * b + 1)
        return code

    assert order == sorted(range(H * W), key=lambda n: morton(n // W, n % W))
    pos = {tok: t for t, tok in enumerate(order)}
    for size in (2, 4, 8):  # every aligned size x size block is one run of the order
        for bi in range(0, H, size):
            for bj in range(0, W, size):
                ps = sorted(pos[i * W + j] for i in range(bi, min(bi + size, H)) for j in range(bj, min(bj + size, W)))
                assert ps == list(range(ps[0], ps[0] + len(ps)))
    if H >= 2 and W >= 2:  # inside a 2x2 block: right, diagonal back, right (steps between neighbours)
        assert order[:4] == [0, 1, W, W + 1]


def test_scan_order_rejects_unknown_names_and_empty_grids():
    with pytest.raises(ValueError, match="valid orders are"):
        scan_order("spiral", 3, 3)
    with pytest.raises(ValueError, match="grid: expected H, W >= 1"):
        scan_order("raster", 0, 3)


# ---- the ops behind the kinds ------------------------------------------------------------------------


def _qkv(B, heads, H, W, d=8):
    return [torch.randn(B, heads, H, W, d, dtype=torch.float64, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("backend", ["reference", "dense"])
@pytest.mark.parametrize("paths", ["h2v", "v2h"])
def test_single_path_full_attention_is_one_softmax_of_the_kinds_mask(paths, backend):
    q, k, v = _qkv(2, 2, 3, 5)
    log_alpha, log_beta = random_decays(2, 2, 3, 5), random_decays(2, 2, 3, 5)
    out = polyline_attention(q, k, v, log_alpha, log_beta, paths=paths, backend=backend)
    seq = [t.reshape(2, 2, 15, 8) for t in (q, k, v)]
    want = log_mask_attention(*seq, get_mask(paths).log_masks(log_alpha, log_beta), backend="reference")
    torch.testing.assert_close(out.reshape(2, 2, 15, 8), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "dense"])
def test_single_path_criss_cross_keeps_one_order_of_the_average(backend):
    q, k, v = _qkv(1, 2, 4, 3)
    log_alpha, log_beta = random_decays(1, 2, 4, 3), random_decays(1, 2, 4, 3)
    outs = {p: criss_cross_polyline_attention(q, k, v, log_alpha, log_beta, paths=p, backend=backend)
            for p in ("both", "h2v", "v2h")}  # fmt: skip
    torch.testing.assert_close(outs["both"], 0.5 * (outs["h2v"] + outs["v2h"]), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(outs["h2v"], outs["v2h"])
    # h2v = Aw(Ah v): with a 1-row grid the column pass is the identity, so h2v equals row attention alone.
    q1, k1, v1 = _qkv(1, 1, 1, 5)
    a1, b1 = random_decays(1, 1, 1, 5), random_decays(1, 1, 1, 5)
    row_only = polyline_attention(q1, k1, v1, a1, b1, paths="h2v", backend="reference")
    torch.testing.assert_close(
        criss_cross_polyline_attention(q1, k1, v1, a1, b1, paths="h2v", backend=backend), row_only
    )


def test_paths_and_log_mask_attention_reject_bad_arguments(monkeypatch):
    q, k, v = _qkv(1, 1, 2, 2)
    a = random_decays(1, 1, 2, 2)
    with pytest.raises(ValueError, match="paths: expected one of"):
        polyline_attention(q, k, v, a, a, paths="diagonal")
    from ppma.ops.backends import TRITON_INSTALLED, why_not

    if TRITON_INSTALLED:  # single paths run on the fused kernels too (checked against the reference in test_triton)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert why_not("triton", "full", q, True, "h2v") is None and why_not("triton", "full", q, True, "v2h") is None
    seq = [t.reshape(1, 1, 4, 8) for t in (q, k, v)]
    with pytest.raises(ValueError, match="log_masks: expected"):
        log_mask_attention(*seq, [torch.zeros(5, 5)])
    with pytest.raises(ValueError, match="at least one"):
        log_mask_attention(*seq, [])


@pytest.mark.parametrize("name", list(MASKS))
def test_attention_layer_computes_the_kinds_definition(name):
    """Whatever fast path the layer takes (SDPA, one path, one softmax for RMT), it is mean_i softmax(S + M_i)."""
    torch.set_default_dtype(torch.float64)
    try:
        layer = PolylineAttention(16, 2, mode="full", mask=name, backend="reference")
        x = torch.randn(2, 3, 4, 16)
        B, H, W, _C = x.shape
        q, k, v = (torch.randn(B, 2, H, W, 8) for _ in range(3))
        log_alpha, log_beta = layer.decay(x)
        out = layer._attend(q, k, v, log_alpha, log_beta)
    finally:
        torch.set_default_dtype(torch.float32)
    masks = naive_zoo(name, log_alpha.double(), log_beta.double())
    seq = [t.reshape(B, 2, H * W, 8) for t in (q, k, v)]
    want = log_mask_attention(*seq, masks, scale=1.0, backend="reference")
    torch.testing.assert_close(out.reshape(B, 2, H * W, 8), want, rtol=1e-9, atol=1e-9)


# ---- the zoo inside PPMA -------------------------------------------------------------------------------


def _nano(name: str, **kwargs) -> ppma.PPMA:
    decomposed = (False,) * 4 if MASKS[name].full_only else (True, True, True, False)
    return timm.create_model("ppma_nano", mask=name, decomposed=decomposed, **kwargs)


@pytest.mark.parametrize("name", list(MASKS))
def test_every_mask_builds_runs_forward_and_backward_in_ppma_nano(name):
    model = _nano(name)
    x = torch.randn(2, 3, 40, 56)  # stage grids 10x14, 5x7, 3x4, 2x2
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    decays = [n for n, p in model.named_parameters() if "attn.decay" in n and p.grad.abs().sum() == 0]
    assert not decays, f"decay parameters with zero gradient: {decays}"


def test_parameter_counts_are_equal_except_where_the_decay_generator_changes():
    counts = {name: sum(p.numel() for p in _nano(name).parameters()) for name in MASKS}
    base = counts["polyline"]
    learned = [name for name, kind in MASKS.items() if kind.decay == "learned"]
    assert all(counts[name] == base for name in learned)
    model = _nano("polyline")
    layers = [m for m in model.modules() if isinstance(m, PolylineAttention)]
    generator = sum(p.numel() for m in layers for p in m.decay.parameters())
    assert counts["none"] == counts["rmt"] == base - generator
    assert counts["polyline_shared"] == base - sum(m.head_dim for m in layers)  # dt_linear predicts one channel


def test_polyline_mask_is_the_default_model_exactly():
    torch.manual_seed(3)
    default = timm.create_model("ppma_nano").eval()
    torch.manual_seed(3)
    named = timm.create_model("ppma_nano", mask="polyline").eval()
    assert default.state_dict().keys() == named.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), named.state_dict().values()))
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(default(x), named(x))


def test_rmt_uses_rmts_per_stage_gammas():
    model = _nano("rmt")
    for i, stage in enumerate(model.stages):
        heads_range = (4.0, 4.0, 6.0, 6.0)[i]
        for block in stage.blocks:
            decay = block.attn.decay
            torch.testing.assert_close(
                decay.log_gamma, rmt_log_gamma(decay.num_heads, 2.0, heads_range), rtol=0, atol=0
            )


def test_unknown_mask_and_scan_mask_in_decomposed_blocks_raise_one_line_errors():
    with pytest.raises(ValueError, match="valid masks are 'none', 'polyline', 'h2v'"):
        timm.create_model("ppma_nano", mask="spiral")
    with pytest.raises(ValueError, match="'hilbert' is a 1D scan mask and needs full attention, but stages 1, 2, 3"):
        timm.create_model("ppma_nano", mask="hilbert")
    with pytest.raises(ValueError, match="needs full attention"):
        PolylineAttention(16, 2, mode="criss_cross", mask="zorder")


# ---- pictures ---------------------------------------------------------------------------------------------


def test_zoo_query_maps_are_the_query_rows_averaged_over_the_kinds_masks():
    a, b = random_decays(3, 5), random_decays(3, 5)
    maps = zoo_query_maps(list(MASKS), 3, 5, (1, 2), a, b)
    assert list(maps) == list(MASKS)
    m = naive_polyline_log_mask(a[None, None], b[None, None])[0, 0]
    torch.testing.assert_close(maps["polyline"], 0.5 * (m[7].exp() + m[:, 7].exp()).reshape(3, 5))
    torch.testing.assert_close(maps["h2v"], m[7].exp().reshape(3, 5))
    for values in maps.values():
        assert values.shape == (3, 5) and values[1, 2] == 1 and (values <= 1).all() and (values > 0).all()
    with pytest.raises(ValueError, match="outside the 3x5 grid"):
        zoo_query_maps(["none"], 3, 5, (3, 0))


def test_viz_mask_flag_draws_zoo_masks_side_by_side(tmp_path, capsys):
    pytest.importorskip("ppma.viz")
    from ppma.cli import main

    out = tmp_path / "zoo.png"
    assert (
        main(["viz", "mask", "--mask", "all", "--model", "ppma_nano", "--size", "64", "--stage", "0", "-o", str(out)])
        == 0
    )
    assert out.stat().st_size > 10_000
    assert main(["viz", "mask", "--mask", "hilbert,spiral", "-o", str(out)]) == 2
    assert "valid masks are" in capsys.readouterr().err


def test_scan_convention_aliases_name_the_path_from_its_source():
    """h2v_scan (source -> target, 2DMamba) is our v2h: the key's row first, then the query's column."""
    assert get_mask("h2v_scan") is MASKS["v2h"] and get_mask("v2h_scan") is MASKS["h2v"]
    H, W = 3, 4
    log_alpha, log_beta = random_decays(1, 1, H, W), random_decays(1, 1, H, W)
    (m,) = get_mask("h2v_scan").log_masks(log_alpha, log_beta)
    a, b = log_alpha[0, 0], log_beta[0, 0]
    # query (0, 0), key (2, 3): from the key along its row (horizontal) to column 0, then up column 0
    want = a[2, 1:].sum() + b[1:, 0].sum()
    torch.testing.assert_close(m[0, 0, 0, 2 * W + 3], want)
    layer = PolylineAttention(16, 2, mask="v2h_scan")
    assert layer.mask.name == "h2v"
