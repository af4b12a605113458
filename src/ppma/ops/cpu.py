"""The fastest correct CPU path: explicit batched matmuls and softmaxes, each score matrix formed once.

Why it beats ``dense`` on CPU (measured in benchmarks/bench_ops.py, BENCHMARKS.md): ``dense`` calls
``scaled_dot_product_attention`` with a float mask, which on CPU recomputes ``q k^T`` per call
(twice for full attention, three times for decomposed) and checks the mask for -inf rows each
time. Here:

- full: ``S = q k^T`` once; the mask is built once in the ``(H, W, H, W)`` layout as the sum of a
  row part and a column part; the two softmaxes are averaged before one product with v.
- criss-cross: row scores ``(B, heads, H, W, W)`` and column scores ``(B, heads, W, H, H)`` are
  formed and normalised once; both orders then reuse them:
  ``out = 0.5 * Ah (Aw v) + 0.5 * Aw (Ah v)`` as four small batched products, with the row product
  done once on ``[v | Ah v]``. Memory is O(N^1.5) like ``dense``.

Runs in float64 when given float64; half-precision inputs are upcast to float32 (autocast off), so
log-decays, prefix sums and masks stay at least float32. Autograd does the backward.
"""

from __future__ import annotations

import torch

from ..mask import _line_log_mask, _polyline_log_mask
from ._common import upcast


def full(q, k, v, log_alpha, log_beta, scale: float) -> torch.Tensor:
    B, heads, H, W, d = q.shape
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        mask = _polyline_log_mask(log_alpha, log_beta).to(scores.dtype)  # (B, heads, N, N)
        attn = torch.softmax(scores + mask, dim=-1) + torch.softmax(scores + mask.transpose(-1, -2), dim=-1)
        return (torch.matmul(attn, v) * 0.5).reshape(B, heads, H, W, -1)


def criss_cross(q, k, v, log_alpha, log_beta, scale: float) -> torch.Tensor:
    dv = v.shape[-1]
    with upcast(q, k, v) as (q, k, v):
        row_mask = _line_log_mask(log_alpha).to(q.dtype)  # (B, heads, H, W, W): row i, [j, l]
        col_mask = _line_log_mask(log_beta.transpose(-1, -2)).to(q.dtype)  # (B, heads, W, H, H): column j, [i, k]
        q_cols, k_cols = q.transpose(2, 3), k.transpose(2, 3)  # (B, heads, W, H, d): columns as sequences
        attn_w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + row_mask, dim=-1)  # (B, heads, H, W, W)
        attn_h = torch.softmax(torch.matmul(q_cols, k_cols.transpose(-1, -2)) * scale + col_mask, dim=-1)  # (.., W, H, H)
        cols_v = torch.matmul(attn_h, v.transpose(2, 3)).transpose(2, 3)  # Ah v, (B, heads, H, W, dv)
        # One row product serves both orders: Aw [v | Ah v].
        rows_both = torch.matmul(attn_w, torch.cat([v, cols_v], dim=-1))
        rows_v, rows_cols_v = rows_both.split(dv, dim=-1)
        cols_rows_v = torch.matmul(attn_h, rows_v.transpose(2, 3)).transpose(2, 3)  # Ah (Aw v)
        return 0.5 * (cols_rows_v + rows_cols_v)
