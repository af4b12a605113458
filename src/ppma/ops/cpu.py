"""The fastest correct CPU path: explicit batched matmuls, each score matrix formed once, few passes over the scores.

On CPU the score-sized passes (N x N for full attention, N x sqrt(N) per direction for decomposed
attention) cost more than the matrix products, so this path counts them (benchmarks/bench_ops.py,
BENCHMARKS.md):

- full: ``S = q k^T`` once for both softmaxes; the path distances ``-M`` are written once, in
  row-major token order, and M^T is read through strides; the two softmaxes are summed before one
  product with v.
- criss-cross: the mask enters as ``baddbmm(dist, q, k^T, beta=-1)``: the product writes straight
  onto the path distances ``|P[p] - P[q]|`` (P the prefix sums), so scores, scale and mask take one
  pass, not four (matmul, scale, distance, subtract); then one softmax. (For full attention this
  would need a second product, ``k q^T``, for M^T: measured slower than one product and a strided
  read.) Rows and columns are batches of 3D sequences, ``(B*heads*H, W, d)`` and
  ``(B*heads*W, H, d)``; ``out = 0.5 * Ah (Aw v) + 0.5 * Aw (Ah v)`` takes three products, not four:
  the row product runs once on ``[v | Ah v]``. Memory is O(N^1.5) like ``dense``.

Runs in float64 when given float64; half-precision inputs are upcast to float32 (autocast off), so
log-decays, prefix sums and masks stay at least float32. Autograd does the backward.
"""

from __future__ import annotations

import torch

from ._common import upcast


def _line_distance(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``-line_log_mask(x)`` = |P[p] - P[q]| with ``P = cumsum(x)`` in ``dtype`` (at least float32), (..., n, n)."""
    cum = torch.cumsum(x, dim=-1, dtype=dtype)
    return (cum.unsqueeze(-1) - cum.unsqueeze(-2)).abs()


def _polyline_distance(log_alpha: torch.Tensor, log_beta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``-polyline_log_mask``, (B * heads, N, N), written once in row-major token order."""
    B, heads, H, W = log_alpha.shape
    row = _line_distance(log_alpha, dtype)  # (B, heads, H, W, W): [i, j, l]
    col = _line_distance(log_beta.transpose(-1, -2), dtype).permute(0, 1, 3, 4, 2).contiguous()  # [i, k, l]
    # [i, j, k, l] = row[i, j, l] + col[i, k, l]; both inputs contiguous, so the sum is too and reshapes freely
    return (row.unsqueeze(-2) + col.unsqueeze(-3)).reshape(B * heads, H * W, H * W)


def _masked_scores(dist: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * q k^T - dist`` in one pass over the (.., n, n) output."""
    return torch.baddbmm(dist, q, k.transpose(1, 2), beta=-1, alpha=scale)


def full(q, k, v, log_alpha, log_beta, scale: float) -> torch.Tensor:
    B, heads, H, W, d = q.shape
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B * heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        scores = torch.bmm(q, k.transpose(1, 2))  # formed once, used by both softmaxes
        if scale != 1.0:
            scores = scores * scale
        dist = _polyline_distance(log_alpha, log_beta, q.dtype)
        attn = torch.softmax(scores - dist, dim=-1) + torch.softmax(scores - dist.transpose(1, 2), dim=-1)
        return (torch.bmm(attn, v) * 0.5).reshape(B, heads, H, W, -1)


def criss_cross(q, k, v, log_alpha, log_beta, scale: float) -> torch.Tensor:
    B, heads, H, W, _ = q.shape
    dv = v.shape[-1]
    rows, cols = B * heads * H, B * heads * W

    def to_cols(t):  # row sequences (B*heads*H, W, c) or the grid (B, heads, H, W, c) -> columns (B*heads*W, H, c)
        return t.reshape(B * heads, H, W, -1).transpose(1, 2).reshape(cols, H, -1)

    def cols_to_rows(t):  # (B*heads*W, H, c) -> row sequences (B*heads*H, W, c)
        return t.reshape(B * heads, W, H, -1).transpose(1, 2).reshape(rows, W, -1)

    with upcast(q, k, v) as (q, k, v):
        row_dist = _line_distance(log_alpha, q.dtype).reshape(rows, W, W)  # row i: [j, l]
        col_dist = _line_distance(log_beta.transpose(-1, -2), q.dtype).reshape(cols, H, H)  # column j: [i, k]
        q_rows, k_rows, v_rows = (t.reshape(rows, W, -1) for t in (q, k, v))
        attn_w = torch.softmax(_masked_scores(row_dist, q_rows, k_rows, scale), dim=-1)
        attn_h = torch.softmax(_masked_scores(col_dist, to_cols(q), to_cols(k), scale), dim=-1)
        cols_v = cols_to_rows(torch.bmm(attn_h, to_cols(v)))  # Ah v
        # One row product serves both orders: Aw [v | Ah v].
        rows_both = torch.bmm(attn_w, torch.cat([v_rows, cols_v], dim=-1))
        rows_v, rows_cols_v = rows_both.split(dv, dim=-1)
        cols_rows_v = cols_to_rows(torch.bmm(attn_h, to_cols(rows_v)))  # Ah (Aw v)
        return (0.5 * (cols_rows_v + rows_cols_v)).reshape(B, heads, H, W, dv)
