"""The attention functions (reference backend) against a direct float64 reading of design.md §3-4."""

from __future__ import annotations

import pytest
import torch
from conftest import random_decays
from naive import naive_line_log_mask, naive_polyline_log_mask

import ppma


def _inputs(B, heads, H, W, d, dv=None):
    q, k = (torch.randn(B, heads, H, W, d, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, heads, H, W, dv or d, dtype=torch.float64)
    return q, k, v, random_decays(B, heads, H, W), random_decays(B, heads, H, W)


def _spec_full(q, k, v, log_alpha, log_beta, scale):
    """Query by query: 0.5 softmax(S + M) + 0.5 softmax(S + M^T), then @ v."""
    B, heads, H, W, d = q.shape
    M = naive_polyline_log_mask(log_alpha, log_beta)
    qf, kf, vf = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))
    out = torch.zeros(B, heads, H * W, vf.shape[-1], dtype=torch.float64)
    for n in range(H * W):
        s = torch.einsum("bhd,bhmd->bhm", qf[:, :, n], kf) * scale
        w = 0.5 * torch.softmax(s + M[:, :, n, :], -1) + 0.5 * torch.softmax(s + M[:, :, :, n], -1)
        out[:, :, n] = torch.einsum("bhm,bhmd->bhd", w, vf)
    return out.reshape(B, heads, H, W, -1)


def _spec_criss_cross(q, k, v, log_alpha, log_beta, scale):
    """Per row and column softmaxes; Ah(Aw v) and Aw(Ah v) summed token by token."""
    B, heads, H, W, d = q.shape
    row = naive_line_log_mask(log_alpha)  # (B, heads, H, W, W)
    col = naive_line_log_mask(log_beta.transpose(-1, -2))  # (B, heads, W, H, H)
    Aw = torch.zeros(B, heads, H, W, W, dtype=torch.float64)  # Aw[i, j, l]
    Ah = torch.zeros(B, heads, W, H, H, dtype=torch.float64)  # Ah[j, i, k]
    for i in range(H):
        for j in range(W):
            Aw[:, :, i, j] = torch.softmax(torch.einsum("bhd,bhld->bhl", q[:, :, i, j], k[:, :, i]) * scale + row[:, :, i, j], -1)
            Ah[:, :, j, i] = torch.softmax(torch.einsum("bhd,bhkd->bhk", q[:, :, i, j], k[:, :, :, j]) * scale + col[:, :, j, i], -1)
    out = torch.zeros_like(v)
    for i in range(H):
        for j in range(W):
            for kk in range(H):
                for ll in range(W):
                    # row then column: (i, j) -> column j to row kk, then row kk to (kk, ll)
                    w1 = Ah[:, :, j, i, kk] * Aw[:, :, kk, j, ll]
                    # column then row: (i, j) -> row i to column ll, then column ll to (kk, ll)
                    w2 = Aw[:, :, i, j, ll] * Ah[:, :, ll, i, kk]
                    out[:, :, i, j] += (0.5 * (w1 + w2))[..., None] * v[:, :, kk, ll]
    return out


@pytest.mark.parametrize("H,W", [(1, 1), (1, 5), (4, 1), (3, 4), (5, 3)])
def test_polyline_attention_matches_spec(H, W):
    args = _inputs(2, 2, H, W, 4, dv=3)
    got = ppma.polyline_attention(*args, backend="reference")
    torch.testing.assert_close(got, _spec_full(*args, scale=4**-0.5), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("H,W", [(1, 1), (1, 5), (4, 1), (3, 4), (5, 3)])
def test_criss_cross_attention_matches_spec(H, W):
    args = _inputs(2, 2, H, W, 4, dv=3)
    got = ppma.criss_cross_polyline_attention(*args, backend="reference", scale=0.7)
    torch.testing.assert_close(got, _spec_criss_cross(*args, scale=0.7), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [ppma.polyline_attention, ppma.criss_cross_polyline_attention])
def test_attention_passes_gradcheck(fn):
    args = tuple(t.requires_grad_() for t in _inputs(1, 2, 2, 3, 3))
    assert torch.autograd.gradcheck(lambda *a: fn(*a, backend="reference"), args)


def test_zero_decays_give_plain_softmax_attention():
    q, k, v, _, _ = _inputs(2, 2, 3, 4, 8)
    zero = torch.zeros(2, 2, 3, 4, dtype=torch.float64)
    got = ppma.polyline_attention(q, k, v, zero, zero, backend="reference")
    flat = [t.reshape(2, 2, 12, -1) for t in (q, k, v)]
    want = torch.nn.functional.scaled_dot_product_attention(*flat).reshape(2, 2, 3, 4, -1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_attention_rejects_bad_arguments():
    q, k, v, a, b = _inputs(1, 2, 3, 4, 8)
    with pytest.raises(ValueError, match="k"):
        ppma.polyline_attention(q, k[..., :4], v, a, b)
    with pytest.raises(ValueError, match="v"):
        ppma.polyline_attention(q, k, v[:, :, :2], a, b)
    with pytest.raises(ValueError, match="log_beta"):
        ppma.criss_cross_polyline_attention(q, k, v, a, b[..., :3])
    with pytest.raises(ValueError, match="log_alpha"):
        ppma.polyline_attention(q, k, v, -a, b)
    with pytest.raises(ValueError, match="q"):
        ppma.polyline_attention(q.flatten(2, 3), k, v, a, b)
    with pytest.raises(ValueError, match="backend.*'reference'"):
        ppma.polyline_attention(q, k, v, a, b, backend="cuda-magic")
