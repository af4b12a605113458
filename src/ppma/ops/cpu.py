"""The fastest correct CPU path: explicit batched matmuls and softmaxes, each score matrix formed once.

Why it beats ``dense`` on CPU (measured in benchmarks/bench_ops.py, BENCHMARKS.md): ``dense`` calls
``scaled_dot_product_attention`` with a float mask, which on CPU recomputes ``q k^T`` per call
(twice for full attention, three times for decomposed) and checks the mask for -inf rows each
time. Here:

- full: ``S = q k^T`` once for both softmaxes (M and M^T), which are summed before one product
  with v (the gain over ``reference`` is small; over ``dense`` it is the second ``q k^T``).
- criss-cross: row scores ``(B, heads, H, W, W)`` and column scores ``(B, heads, W, H, H)`` are
  formed and normalised once, with einsum so that the column sequences are never copied out of the
  grid layout; ``out = 0.5 * Ah (Aw v) + 0.5 * Aw (Ah v)`` takes three products, not four: the row
  product runs once on ``[v | Ah v]``. Memory is O(N^1.5) like ``dense``.

Runs in float64 when given float64; half-precision inputs are upcast to float32 (autocast off), so
log-decays, prefix sums and masks stay at least float32. Autograd does the backward.
"""

from __future__ import annotations

import torch

from ..mask import _polyline_log_mask
from ._common import upcast


def _line_distance(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``-line_log_mask(x)`` = |P[p] - P[q]| with ``P = cumsum(x)`` in ``dtype`` (at least float32)."""
    cum = torch.cumsum(x, dim=-1, dtype=dtype)
    return (cum.unsqueeze(-1) - cum.unsqueeze(-2)).abs()


def full(q, k, v, log_alpha, log_beta, scale: float) -> torch.Tensor:
    B, heads, H, W, d = q.shape
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # formed once, used by both softmaxes
        mask = _polyline_log_mask(log_alpha, log_beta).to(scores.dtype)  # (B, heads, N, N)
        attn = torch.softmax(scores + mask, dim=-1) + torch.softmax(scores + mask.transpose(-1, -2), dim=-1)
        return (torch.matmul(attn, v) * 0.5).reshape(B, heads, H, W, -1)


def criss_cross(q, k, v, log_alpha, log_beta, scale: float) -> torch.Tensor:
    dv = v.shape[-1]
    with upcast(q, k, v) as (q, k, v):
        row_dist = _line_distance(log_alpha, q.dtype)  # (B, heads, H, W, W): row i, [j, l]
        col_dist = _line_distance(log_beta.transpose(-1, -2), q.dtype)  # (B, heads, W, H, H): column j, [i, k]
        # einsum keeps the grid layout of q, k, v (no transposed copies of the column sequences)
        attn_w = torch.softmax(torch.einsum("bhijd,bhild->bhijl", q, k) * scale - row_dist, dim=-1)
        attn_h = torch.softmax(torch.einsum("bhijd,bhkjd->bhjik", q, k) * scale - col_dist, dim=-1)
        cols_v = torch.einsum("bhjik,bhkjd->bhijd", attn_h, v)  # Ah v
        # One row product serves both orders: Aw [v | Ah v].
        rows_both = torch.einsum("bhijl,bhild->bhijd", attn_w, torch.cat([v, cols_v], dim=-1))
        rows_v, rows_cols_v = rows_both.split(dv, dim=-1)
        cols_rows_v = torch.einsum("bhjik,bhkjd->bhijd", attn_h, rows_v)  # Ah (Aw v)
        return 0.5 * (cols_rows_v + rows_cols_v)
