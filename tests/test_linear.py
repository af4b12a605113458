"""Polyline-masked linear attention (ppma.linear) against the dense float64 formula, forward and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_decays
from naive import naive_polyline_log_mask

from ppma.linear import PolylineLinearAttention, polyline_linear_attention


def dense_linear_attention(q, k, v, log_alpha, log_beta, paths: str, eps: float = 1e-6) -> torch.Tensor:
    """((phi(Q) phi(K)^T) * L) V / ((phi(Q) phi(K)^T) * L) 1 with L = exp(M) formed as an N x N matrix."""
    B, heads, H, W, d = q.shape
    phi_q, phi_k = (F.elu(t.reshape(B, heads, H * W, d)) + 1 for t in (q, k))
    L = naive_polyline_log_mask(log_alpha, log_beta).exp()
    outs = []
    for mask in {"both": [L, L.mT], "h2v": [L], "v2h": [L.mT]}[paths]:
        A = (phi_q @ phi_k.mT) * mask
        outs.append(A @ v.reshape(B, heads, H * W, -1) / (A.sum(-1, keepdim=True) + eps))
    return (sum(outs) / len(outs)).reshape(B, heads, H, W, -1)


def _inputs(H: int, W: int, B: int = 2, heads: int = 2, d: int = 4, dv: int = 3) -> tuple[torch.Tensor, ...]:
    """Fresh float64 q, k (d), v (dv) and log-decays on an H x W grid, all requiring grad."""
    q, k = (torch.randn(B, heads, H, W, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, heads, H, W, dv, dtype=torch.float64, requires_grad=True)
    return q, k, v, random_decays(B, heads, H, W).requires_grad_(), random_decays(B, heads, H, W).requires_grad_()


@pytest.mark.parametrize("paths", ["both", "h2v", "v2h"])
@pytest.mark.parametrize("H,W", [(1, 1), (1, 7), (6, 1), (4, 4), (5, 9)])
def test_linear_attention_equals_the_dense_formula_forward_and_gradients(H, W, paths):
    inputs = _inputs(H, W)
    got = polyline_linear_attention(*inputs, paths=paths)
    want = dense_linear_attention(*inputs, paths=paths)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    cotangent = torch.randn_like(got)
    # On 1-wide or 1-tall grids one direction's decays never enter the mask: their gradient is 0 (or unused).
    grads_got = torch.autograd.grad(got, inputs, cotangent, allow_unused=True)
    grads_want = torch.autograd.grad(want, inputs, cotangent, allow_unused=True)
    for name, g, w, x in zip(("q", "k", "v", "log_alpha", "log_beta"), grads_got, grads_want, inputs):
        g, w = (torch.zeros_like(x) if t is None else t for t in (g, w))
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")


def test_paths_differ_and_both_is_not_a_single_path():
    q, k, v = (torch.randn(1, 1, 3, 4, 4, dtype=torch.float64) for _ in range(3))
    a, b = random_decays(1, 1, 3, 4), random_decays(1, 1, 3, 4)
    outs = {p: polyline_linear_attention(q, k, v, a, b, paths=p) for p in ("both", "h2v", "v2h")}
    assert not torch.allclose(outs["h2v"], outs["v2h"])
    torch.testing.assert_close(outs["both"], 0.5 * (outs["h2v"] + outs["v2h"]))


def test_layer_runs_forward_backward_and_every_parameter_gets_a_gradient():
    layer = PolylineLinearAttention(32, 4)
    x = torch.randn(2, 5, 7, 32)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_bad_input_raises():
    q = torch.randn(1, 2, 3, 3, 4)
    a = random_decays(1, 2, 3, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="log_alpha: shape"):
        polyline_linear_attention(q, q, q, a[..., :2], a)
    with pytest.raises(ValueError, match="log_beta: contains positive values"):
        polyline_linear_attention(q, q, q, a, -a)
    with pytest.raises(ValueError, match="paths: expected"):
        polyline_linear_attention(q, q, q, a, a, paths="x")


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"q": [[0.0]]}, r"^q: expected a torch\.Tensor"),
        ({"k": torch.randn(1, 2, 3, 3, 5)}, r"^k: shape \(1, 2, 3, 3, 5\) does not match q shape"),
        ({"v": torch.randn(1, 2, 3, 2, 4)}, r"^v: leading shape \(1, 2, 3, 2\) does not match q's"),
        ({"log_alpha": torch.zeros(1, 2, 3)}, r"^log_alpha: expected 4 dimensions"),
        ({"log_beta": torch.ones(1, 2, 3, 3)}, r"^log_beta: contains positive values"),
    ],
)
def test_linear_and_full_attention_refuse_bad_input_in_the_same_words(bad, match):
    """One checker (ppma._checks.check_grid_attention) for both ops: the same input, the same message."""
    from ppma.ops import polyline_attention

    q = torch.randn(1, 2, 3, 3, 4)
    a = random_decays(1, 2, 3, 3, dtype=torch.float32)
    args = {"q": q, "k": q, "v": q, "log_alpha": a, "log_beta": a, **bad}
    messages = []
    for op in (polyline_linear_attention, polyline_attention):
        with pytest.raises(ValueError, match=match) as e:
            op(**args)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("paths", ["both", "h2v", "v2h"])
@pytest.mark.parametrize("H,W", [(1, 5), (4, 4), (5, 3)])
def test_masked_linear_attention_is_the_rebuttals_form_forward_and_gradients(H, W, paths):
    """((Q K^T) * L) V exactly: no feature map, no normaliser, against the N x N float64 formula."""
    from ppma.linear import masked_linear_attention

    inputs = _inputs(H, W)
    q, k, v, log_alpha, log_beta = inputs
    B, heads, _, _, d = q.shape
    dv, N = v.shape[-1], H * W
    L = naive_polyline_log_mask(log_alpha, log_beta).exp()
    scores = q.reshape(B, heads, N, d) @ k.reshape(B, heads, N, d).mT
    masks = {"both": [L, L.mT], "h2v": [L], "v2h": [L.mT]}[paths]
    want = (sum((scores * m) @ v.reshape(B, heads, N, dv) for m in masks) / len(masks)).reshape(B, heads, H, W, dv)
    got = masked_linear_attention(*inputs, paths=paths)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    same = polyline_linear_attention(*inputs, paths=paths, feature_map=None, normalize=False)
    torch.testing.assert_close(same, got, rtol=0, atol=0)
    cotangent = torch.randn_like(got)
    grads_got = torch.autograd.grad(got, inputs, cotangent, allow_unused=True)
    grads_want = torch.autograd.grad(want, inputs, cotangent, allow_unused=True)
    for g, w in zip(grads_got, grads_want):
        if w is None:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g if g is not None else torch.zeros_like(w), w, rtol=1e-9, atol=1e-11)
    # the normalised form differs from it (the feature map and the row sums matter)
    assert not torch.allclose(polyline_linear_attention(*inputs, paths=paths), got)
