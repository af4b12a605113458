"""Fused-kernel attention with a stored mask, the way the published code works but through SDPA.

Full attention stores the (B, heads, N, N) mask and calls ``scaled_dot_product_attention`` twice
(M and M^T); decomposed attention stores the 1D row and column masks, O(N^1.5), and runs row and
column attention as batched 4D SDPA calls (5D inputs would send CUDA to the unfused math path)
without forming the composed map. Half-precision inputs
run in float32 so the mask keeps its float32 precision (SDPA wants one dtype for q and the mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks.polyline import unchecked_line_log_mask, unchecked_polyline_log_masks
from ._common import upcast


def full(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    B, heads, H, W, d = q.shape
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        # M and/or M^T, each written contiguous once (SDPA would copy a transposed M)
        masks = unchecked_polyline_log_masks(log_alpha, log_beta, paths)
        outs = [F.scaled_dot_product_attention(q, k, v, attn_mask=m.to(q.dtype), scale=scale) for m in masks]
        out = outs[0] if len(outs) == 1 else 0.5 * (outs[0] + outs[1])
        return out.reshape(B, heads, H, W, -1)


def unmasked(q, k, v, scale: float) -> torch.Tensor:
    """Plain SDPA over the grid's tokens; q, k, v (B, heads, H, W, d)."""
    B, heads, H, W, _ = q.shape
    seq = [t.reshape(B, heads, H * W, -1) for t in (q, k, v)]  # tokens row-major
    return F.scaled_dot_product_attention(*seq, scale=scale).reshape(B, heads, H, W, -1)


def masked(q, k, v, log_masks, scale: float) -> torch.Tensor:
    """``mean_i softmax(S + M_i) @ v``: one SDPA call per given log-mask; q, k, v (B, heads, N, d)."""
    with upcast(q, k, v) as (q, k, v):
        outs = [F.scaled_dot_product_attention(q, k, v, attn_mask=m.to(q.dtype), scale=scale) for m in log_masks]
        return sum(outs) / len(outs)


def _batched_sdpa(q, k, v, mask, scale: float) -> torch.Tensor:
    """SDPA over (B, heads, lines, L, d) sequences; (B * heads) as SDPA's batch, so the fused 4D kernels apply."""
    B, heads = q.shape[:2]
    out = F.scaled_dot_product_attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask.flatten(0, 1), scale=scale
    )  # (B * heads, lines, L, dv)
    return out.unflatten(0, (B, heads))


def criss_cross(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    with upcast(q, k, v) as (q, k, v):
        row_mask = unchecked_line_log_mask(log_alpha).to(q.dtype)  # (B, heads, H, W, W)
        # contiguous (small) first, so that the (B, heads, W, H, H) masks come out contiguous
        col_mask = unchecked_line_log_mask(log_beta.transpose(-1, -2).contiguous()).to(q.dtype)
        q_cols, k_cols = q.transpose(2, 3), k.transpose(2, 3)  # (B, heads, W, H, d): columns as sequences

        def along_rows(u):  # Aw u: each row of the grid is a length-W sequence
            return _batched_sdpa(q, k, u, row_mask, scale)

        def along_cols(u):  # Ah u: each column is a length-H sequence
            return _batched_sdpa(q_cols, k_cols, u.transpose(2, 3), col_mask, scale).transpose(2, 3)

        if paths == "h2v":  # Aw(Ah v) only
            return along_rows(along_cols(v))
        if paths == "v2h":  # Ah(Aw v) only
            return along_cols(along_rows(v))
        cols_v = along_cols(v)
        # One row pass serves both orders: Aw [v | Ah v] along the channel axis.
        rows_both = along_rows(torch.cat([v, cols_v], dim=-1))
        rows_v, rows_cols_v = rows_both.split(v.shape[-1], dim=-1)
        return 0.5 * along_cols(rows_v) + 0.5 * rows_cols_v
