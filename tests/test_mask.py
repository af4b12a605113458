"""Mask maths (ppma.masks.polyline) against the token-by-token path walk, plus properties and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import random_decays
from naive import naive_line_log_mask, naive_polyline_log_mask

import ppma

GRIDS = [(1, 1), (1, 6), (5, 1), (2, 2), (3, 5), (7, 4), (4, 7)]


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13])
def test_line_log_mask_matches_naive(n):
    x = random_decays(2, 3, n)
    torch.testing.assert_close(ppma.line_log_mask(x), naive_line_log_mask(x), rtol=0, atol=1e-12)


def test_line_log_mask_is_symmetric_nonpositive_with_zero_diagonal():
    x = random_decays(4, 11)
    m = ppma.line_log_mask(x)
    torch.testing.assert_close(m, m.mT, rtol=0, atol=0)
    assert (m <= 0).all()
    assert (torch.diagonal(m, dim1=-2, dim2=-1) == 0).all()
    # Neighbours differ by exactly one decay: m[p, p+1] = x[p+1].
    torch.testing.assert_close(torch.diagonal(m, offset=1, dim1=-2, dim2=-1), x[:, 1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("H,W", GRIDS)
def test_polyline_log_mask_matches_path_walk(H, W):
    log_alpha, log_beta = random_decays(2, 3, H, W), random_decays(2, 3, H, W)
    got = ppma.polyline_log_mask(log_alpha, log_beta)
    assert got.shape == (2, 3, H * W, H * W)
    torch.testing.assert_close(got, naive_polyline_log_mask(log_alpha, log_beta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("H,W", [(3, 5), (4, 4), (1, 5), (6, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contiguous_masks_equal_m_and_its_transpose_bit_for_bit(H, W, dtype):
    """The masks the dense backend hands SDPA: M and M^T each written row-major from the line tables."""
    from ppma.masks.polyline import unchecked_polyline_log_masks

    log_alpha, log_beta = random_decays(2, 3, H, W, dtype=dtype), random_decays(2, 3, H, W, dtype=dtype)
    want = ppma.polyline_log_mask(log_alpha, log_beta)
    torch.testing.assert_close(want.double(), naive_polyline_log_mask(log_alpha.double(), log_beta.double()),
                               rtol=0, atol=1e-5)  # fmt: skip
    both = unchecked_polyline_log_masks(log_alpha, log_beta)
    h2v, v2h = unchecked_polyline_log_masks(log_alpha, log_beta, "h2v"), unchecked_polyline_log_masks(
        log_alpha, log_beta, "v2h")  # fmt: skip
    assert len(both) == 2 and len(h2v) == len(v2h) == 1
    for got, ref in ((both[0], want), (both[1], want.mT), (h2v[0], want), (v2h[0], want.mT)):
        assert got.is_contiguous() and got.dtype == want.dtype
        assert torch.equal(got, ref)


@pytest.mark.parametrize("H,W", [(3, 5), (4, 4), (1, 5)])
def test_v2h_is_h2v_of_the_transposed_grid(H, W):
    """M^T (v2h) equals h2v on the transposed grid, with alpha and beta swapped, after the token permutation."""
    log_alpha, log_beta = random_decays(1, 2, H, W), random_decays(1, 2, H, W)
    v2h = ppma.polyline_log_mask(log_alpha, log_beta).mT
    h2v_t = ppma.polyline_log_mask(log_beta.mT, log_alpha.mT)  # grid (W, H), tokens j * H + i
    perm = torch.arange(H * W).reshape(H, W).mT.reshape(-1)  # transposed-grid index -> original index
    inv = torch.argsort(perm)
    torch.testing.assert_close(h2v_t[..., inv, :][..., :, inv], v2h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("H,W", GRIDS + [(9, 16)])
def test_polyline_mask_matmul_equals_dense_product(H, W):
    log_alpha, log_beta = random_decays(2, 2, H, W), random_decays(2, 2, H, W)
    x = torch.randn(2, 2, H * W, 5, dtype=torch.float64)
    dense = ppma.polyline_log_mask(log_alpha, log_beta).exp() @ x
    torch.testing.assert_close(ppma.polyline_mask_matmul(log_alpha, log_beta, x), dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,chunk", [(1, None), (10, None), (37, 5), (64, 1), (50, 64)])
def test_line_mask_matmul_every_chunking(n, chunk):
    x, v = random_decays(3, n), torch.randn(3, n, 4, dtype=torch.float64)
    dense = ppma.line_log_mask(x).exp() @ v
    torch.testing.assert_close(ppma.line_mask_matmul(x, v, chunk=chunk), dense, rtol=1e-10, atol=1e-12)


def test_long_line_has_no_prefix_sum_cancellation_in_float32():
    """A 4096-token line of strong decays: chunked products stay accurate where exp(P) would underflow."""
    x = random_decays(4096, dtype=torch.float64, scale=0.5)
    v = torch.randn(4096, 3, dtype=torch.float64)
    want = ppma.line_log_mask(x).exp() @ v
    got = ppma.line_mask_matmul(x.float(), v.float())
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() < 1e-4 * want.abs().max()


def test_mask_functions_pass_gradcheck():
    a, b = random_decays(1, 2, 3, 4).requires_grad_(), random_decays(1, 2, 3, 4).requires_grad_()
    x = torch.randn(1, 2, 12, 3, dtype=torch.float64, requires_grad=True)
    line = random_decays(2, 6).requires_grad_()
    assert torch.autograd.gradcheck(ppma.line_log_mask, (line,))
    assert torch.autograd.gradcheck(ppma.polyline_log_mask, (a, b))
    assert torch.autograd.gradcheck(ppma.polyline_mask_matmul, (a, b, x))


@pytest.mark.parametrize(
    "bad, name",
    [
        (lambda a: a.abs(), "log_alpha"),  # positive log-decays
        (lambda a: a.clone().index_fill_(-1, torch.tensor([0]), float("nan")), "log_alpha"),
        (lambda a: a.clone().index_fill_(-1, torch.tensor([0]), float("-inf")), "log_alpha"),
    ],
)
def test_bad_log_decays_raise_value_error_naming_the_argument(bad, name):
    a, b = random_decays(1, 1, 3, 3), random_decays(1, 1, 3, 3)
    with pytest.raises(ValueError, match=name):
        ppma.polyline_log_mask(bad(a), b)
    with pytest.raises(ValueError, match="log_beta"):
        ppma.polyline_mask_matmul(a, bad(b), torch.randn(1, 1, 9, 2, dtype=torch.float64))


def test_mismatched_shapes_raise_value_error():
    a = random_decays(1, 2, 3, 4)
    with pytest.raises(ValueError, match="log_beta"):
        ppma.polyline_log_mask(a, random_decays(1, 2, 4, 3))
    with pytest.raises(ValueError, match="x"):
        ppma.polyline_mask_matmul(a, a, torch.randn(1, 2, 11, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        ppma.line_log_mask(torch.tensor(1.0).neg())
    with pytest.raises(ValueError, match="x"):
        ppma.line_log_mask(torch.tensor([-1, -2]))  # integer dtype


def test_line_mask_matmul_checks_its_arguments():
    with pytest.raises(ValueError, match="v"):
        ppma.line_mask_matmul(random_decays(2, 5), torch.randn(2, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        ppma.line_mask_matmul(random_decays(2, 5).abs(), torch.randn(2, 5, 3, dtype=torch.float64))
