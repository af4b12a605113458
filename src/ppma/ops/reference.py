"""The oracle: design.md §3-4 written as directly as possible, the definition every backend is tested against.

Forms the log-mask with ``ppma.masks.polyline``, applies two softmaxes and averages. Runs in float64 when
given float64; half-precision inputs are upcast to float32 with autocast off.
"""

from __future__ import annotations

import torch

from ..masks.polyline import unchecked_line_log_mask, unchecked_polyline_log_mask
from ._common import upcast


def full(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    """Full attention with the 2D mask: ``0.5*softmax(S + M) + 0.5*softmax(S + M^T)``, then ``@ v``.

    ``paths="h2v"`` keeps ``softmax(S + M)`` only, ``"v2h"`` ``softmax(S + M^T)`` only.
    """
    B, heads, H, W, d = q.shape
    mask = unchecked_polyline_log_mask(log_alpha, log_beta)
    masks = {"both": [mask, mask.transpose(-1, -2)], "h2v": [mask], "v2h": [mask.transpose(-1, -2)]}[paths]
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        return masked(q, k, v, masks, scale).reshape(B, heads, H, W, -1)


def unmasked(q, k, v, scale: float) -> torch.Tensor:
    """``softmax(S) @ v`` over the grid's tokens; q, k, v (B, heads, H, W, d)."""
    B, heads, H, W, _ = q.shape
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B, heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        attn = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
        return (attn @ v).reshape(B, heads, H, W, -1)


def masked(q, k, v, log_masks, scale: float) -> torch.Tensor:
    """``mean_i softmax(S + M_i) @ v`` for given dense log-masks; q, k, v (B, heads, N, d), each M_i (.., N, N)."""
    with upcast(q, k, v) as (q, k, v):
        scores = (q @ k.transpose(-1, -2)) * scale
        attn = sum(torch.softmax(scores + m.to(scores.dtype), dim=-1) for m in log_masks) / len(log_masks)
        return attn @ v


def criss_cross(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    """Decomposed attention: ``0.5 * Ah(Aw v) + 0.5 * Aw(Ah v)`` with 1D masks along rows and columns.

    ``paths="h2v"`` keeps ``Aw(Ah v)`` (the query's path leaves along its row), ``"v2h"`` keeps ``Ah(Aw v)``.
    """
    with upcast(q, k, v) as (q, k, v):
        row_mask = unchecked_line_log_mask(log_alpha).to(q.dtype)  # (B, heads, H, W, W): row i, [j, l]
        # (B, heads, W, H, H): column j, [i, k]
        col_mask = unchecked_line_log_mask(log_beta.transpose(-1, -2)).to(q.dtype)
        attn_w = torch.softmax(torch.einsum("bhijd,bhild->bhijl", q, k) * scale + row_mask, dim=-1)
        attn_h = torch.softmax(torch.einsum("bhijd,bhkjd->bhjik", q, k) * scale + col_mask, dim=-1)

        def along_rows(u):
            return torch.einsum("bhijl,bhild->bhijd", attn_w, u)

        def along_cols(u):
            return torch.einsum("bhjik,bhkjd->bhijd", attn_h, u)

        if paths == "h2v":
            return along_rows(along_cols(v))
        if paths == "v2h":
            return along_cols(along_rows(v))
        return 0.5 * along_cols(along_rows(v)) + 0.5 * along_rows(along_cols(v))
