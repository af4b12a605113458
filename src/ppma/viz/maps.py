"""The arrays behind the pictures: per-query masks, attention maps and decay maps.

Two layers:

- tensor functions for ONE head, written like design.md §3-4 and built on ``ppma.masks.polyline``
  (``query_mask_maps``, ``full_attention_map``, ``criss_cross_attention_map``, ``window_log_mask``);
- functions on a ``Capture`` that pick the block, head and query token and return numpy arrays
  (``mask_maps``, ``attention_maps``, ``mask_matrix``, ``decay_maps``).

Every per-query mask picture comes from ``query_mask_maps(log_mask, token, grid)`` on an (N, N)
log-mask (row = query, tokens row-major), so any mask of that form can be drawn: pass
``log_mask_fn`` to ``mask_maps``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import PPMAError
from ..masks.polyline import line_log_mask, polyline_log_mask
from .capture import BlockCapture, Capture

__all__ = [
    "LogMaskFn",
    "attention_maps",
    "criss_cross_attention_map",
    "decay_maps",
    "full_attention_map",
    "mask_maps",
    "mask_matrix",
    "polyline_mask",
    "query_mask_maps",
    "window_log_mask",
]

# (log_alpha (H, W), log_beta (H, W)) of one head -> (N, N) log-mask, row = query, tokens row-major.
LogMaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- one head, tensors ------------------------------------------------------------------------------


def polyline_mask(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """The h2v polyline log-mask M of one head: (H, W) decays each -> (N, N), N = H*W (``polyline_log_mask``)."""
    return polyline_log_mask(log_alpha[None, None], log_beta[None, None])[0, 0]


def query_mask_maps(log_mask: torch.Tensor, token: tuple[int, int], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The mask seen by one query, as maps over the token grid.

    Args:
        log_mask: (N, N) log-mask M, row = query, column = key, tokens row-major (N = H*W).
        token: the query's (row, column).
        grid: (H, W).

    Returns:
        ``h2v`` = exp(M[n]), ``v2h`` = exp(M^T[n]) = exp(M[:, n]) and ``average`` of the two, each (H, W)
        in (0, 1]: the multiplicative weight full attention puts on each key before normalising.
    """
    H, W = grid
    if log_mask.shape != (H * W, H * W):
        raise ValueError(f"log_mask: expected shape ({H * W}, {H * W}) for a {H}x{W} grid, got {tuple(log_mask.shape)}")
    n = token[0] * W + token[1]
    h2v = log_mask[n].exp().reshape(H, W)
    v2h = log_mask[:, n].exp().reshape(H, W)
    return {"h2v": h2v, "v2h": v2h, "average": 0.5 * (h2v + v2h)}


def full_attention_map(
    q: torch.Tensor, k: torch.Tensor, log_mask: torch.Tensor, token: tuple[int, int]
) -> torch.Tensor:
    """One query's row of full masked attention, design.md §3: ``0.5 softmax(s + M[n]) + 0.5 softmax(s + M^T[n])``.

    Args:
        q, k: (H, W, d) rotated queries and keys of one head; k already carries the d^-0.5 scale.
        log_mask: (N, N) log-mask M (zeros for the map without mask).
        token: the query's (row, column).

    Returns:
        (H, W) attention weights over the keys, summing to 1.
    """
    H, W, d = q.shape
    n = token[0] * W + token[1]
    scores = k.reshape(H * W, d) @ q[token]  # (N,)
    mask = log_mask.to(scores.dtype)
    attn = 0.5 * torch.softmax(scores + mask[n], -1) + 0.5 * torch.softmax(scores + mask[:, n], -1)
    return attn.reshape(H, W)


def criss_cross_attention_map(
    q: torch.Tensor, k: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor, token: tuple[int, int]
) -> torch.Tensor:
    """One query's effective 2D map through decomposed attention, design.md §4.

    Row attention ``Aw_r[j, l]`` (row r) and column attention ``Ah_c[i, k]`` (column c) compose: the output
    ``0.5 Ah(Aw v) + 0.5 Aw(Ah v)`` at query (i, j) puts on key (k, l) the weight
    ``0.5 Ah_j[i, k] Aw_k[j, l] + 0.5 Aw_i[j, l] Ah_l[i, k]``: a product of two stochastic rows, so the
    map sums to 1.

    Args:
        q, k: (H, W, d) of one head; k already scaled.
        log_alpha, log_beta: (H, W) log-decays (zeros for the map without mask).
        token: the query's (row, column).

    Returns:
        (H, W) effective attention weights.
    """
    i, j = token
    row_mask = line_log_mask(log_alpha).to(q.dtype)  # (H, W, W): row r, [j, l]
    col_mask = line_log_mask(log_beta.transpose(0, 1)).to(q.dtype)  # (W, H, H): column c, [i, k]
    attn_w = torch.softmax(torch.einsum("rjd,rld->rjl", q, k) + row_mask, -1)  # Aw_r[j, l]
    attn_h = torch.softmax(torch.einsum("icd,kcd->cik", q, k) + col_mask, -1)  # Ah_c[i, k]
    cols_then_rows = attn_h[j, i, :, None] * attn_w[:, j, :]  # Ah(Aw v): [k, l] = Ah_j[i, k] * Aw_k[j, l]
    rows_then_cols = attn_w[i, j, None, :] * attn_h[:, i, :].T  # Aw(Ah v): [k, l] = Aw_i[j, l] * Ah_l[i, k]
    return 0.5 * (cols_then_rows + rows_then_cols)


def window_log_mask(
    log_alpha: torch.Tensor, log_beta: torch.Tensor, token: tuple[int, int], window: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The polyline log-mask of a small window of tokens around ``token``, like the paper's 4x4 illustration.

    An L-shaped path between two tokens of a rectangle stays inside it, so this (n, n) matrix is exactly
    the sub-matrix of the whole grid's mask for the window's tokens.

    Args:
        log_alpha, log_beta: (H, W) log-decays of one head.
        token: a (row, column) the window should contain (it is centred there, then kept inside the grid).
        window: (h, w) of the window, at most the grid.

    Returns:
        (h*w, h*w) log-mask of the window and its top-left token (row, column).
    """
    H, W = log_alpha.shape
    h, w = window
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"matrix: a {h}x{w} window does not fit the {H}x{W} token grid of this block")
    top = min(max(token[0] - h // 2, 0), H - h)
    left = min(max(token[1] - w // 2, 0), W - w)
    crop = (slice(top, top + h), slice(left, left + w))
    return polyline_mask(log_alpha[crop], log_beta[crop]), (top, left)


# ---- on a capture: pick block, head, query -----------------------------------------------------------


def head_indices(bc: BlockCapture, head: int | None) -> list[int]:
    """The heads to use: one, or all (averaged) for ``None``."""
    if head is None:
        return list(range(bc.heads))
    if not -bc.heads <= head < bc.heads:
        raise ValueError(f"head: {head} out of range; stage {bc.stage} has heads 0-{bc.heads - 1}")
    return [head % bc.heads]


def _mean(maps: list[torch.Tensor]) -> np.ndarray:
    return torch.stack(maps).mean(0).numpy()


def _check_polyline_picture(bc: BlockCapture) -> None:
    """The polyline picture (H2V, V2H, their average) is a block's own mask only where the block runs both
    paths of it; a single-path kind (h2v, v2h) or a scan mask (hilbert, ...) uses another M: drawing
    polyline_mask of its decays was a picture of a mask the model never applies."""
    from ..masks import get_mask

    kind = get_mask(bc.mask)
    if kind.full_only or (kind.paths != "both" and kind.decay not in ("fixed", "none")):
        raise PPMAError(f"block: stage {bc.stage} block {bc.block} uses mask {bc.mask!r}, not the polyline "
                        f"mask drawn here; draw its own with `ppma viz mask --mask {bc.mask}` "
                        "(ppma.viz.zoo_mask_figure)")  # fmt: skip


def mask_maps(
    cap: Capture,
    query: tuple[float, float],
    stage: int,
    block: int,
    head: int | None = 0,
    log_mask_fn: LogMaskFn = polyline_mask,
) -> dict:
    """The mask of one query token of one block over its token grid.

    Args:
        cap: from ``ppma.viz.run``.
        query: (x, y) in image pixels (ints) or fractions (floats).
        stage, block, head: which mask; ``head=None`` averages the heads' mask values.
        log_mask_fn: (H, W), (H, W) log-decays -> (N, N) log-mask; the polyline mask by default, refused
            (``PPMAError``) for a block whose mask is another (h2v, v2h, scan masks).

    Returns:
        dict with ``h2v``, ``v2h``, ``average`` (H, W) arrays in (0, 1], ``token`` (row, column), ``block``.
    """
    bc = cap.block(stage, block)
    if log_mask_fn is polyline_mask:
        _check_polyline_picture(bc)
    token = cap.image.query_token(query, bc.stride)
    per_head = [query_mask_maps(log_mask_fn(bc.log_alpha[h], bc.log_beta[h]), token, bc.grid)
                for h in head_indices(bc, head)]  # fmt: skip
    out = {name: _mean([m[name] for m in per_head]) for name in ("h2v", "v2h", "average")}
    return dict(out, token=token, block=bc)


def mask_matrix(
    cap: Capture,
    query: tuple[float, float],
    stage: int,
    block: int,
    head: int = 0,
    window: tuple[int, int] = (4, 4),
) -> dict:
    """The full (n, n) mask matrix of a small window of tokens around the query (see ``window_log_mask``).

    Returns:
        dict with ``h2v`` = exp(M) and ``v2h`` = exp(M^T), (n, n) arrays; ``origin`` (top, left) token;
        ``window``; ``token``; ``block``.
    """
    bc = cap.block(stage, block)
    _check_polyline_picture(bc)
    (h,) = head_indices(bc, head)
    token = cap.image.query_token(query, bc.stride)
    log_mask, origin = window_log_mask(bc.log_alpha[h], bc.log_beta[h], token, window)
    return {"h2v": log_mask.exp().numpy(), "v2h": log_mask.T.exp().numpy(), "origin": origin, "window": window,
                "token": token, "block": bc}  # fmt: skip


def attention_maps(cap: Capture, query: tuple[float, float], stage: int, block: int, head: int | None = 0) -> dict:
    """One query token's attention over the keys, with the block's mask and with it removed.

    Full blocks give their attention row; decomposed blocks their effective 2D map. "Without mask" uses
    the same q and k with zero log-decays.

    Returns:
        dict with ``masked`` and ``unmasked`` (H, W) arrays, each summing to 1; ``token``; ``block``.
    """
    bc = cap.block(stage, block)
    if bc.mask != "polyline":  # the formulas below are design.md §3-4 (both paths averaged)
        raise PPMAError(f"block: attention maps are drawn for mask='polyline' layers; this one uses {bc.mask!r}")
    token = cap.image.query_token(query, bc.stride)
    masked, unmasked = [], []
    for h in head_indices(bc, head):
        q, k, la, lb = bc.q[h], bc.k[h], bc.log_alpha[h], bc.log_beta[h]
        if bc.mode == "full":
            log_mask = polyline_mask(la, lb)
            masked.append(full_attention_map(q, k, log_mask, token))
            unmasked.append(full_attention_map(q, k, torch.zeros_like(log_mask), token))
        else:
            masked.append(criss_cross_attention_map(q, k, la, lb, token))
            unmasked.append(criss_cross_attention_map(q, k, torch.zeros_like(la), torch.zeros_like(lb), token))
    return {"masked": _mean(masked), "unmasked": _mean(unmasked), "token": token, "block": bc}


def decay_maps(cap: Capture, block: int = -1, head: int | None = None) -> list[dict]:
    """Horizontal and vertical decays ``alpha = exp(log_alpha)``, ``beta = exp(log_beta)`` of each stage.

    Args:
        block: which block of every stage (negative counts from the end; default the last).
        head: one head, or ``None`` for the mean decay over heads.

    Returns:
        One dict per stage: ``alpha``, ``beta`` (H, W) arrays in (0, 1], ``block``.
    """
    out = []
    for stage in range(len(cap.blocks)):
        bc = cap.block(stage, block)
        heads = head_indices(bc, head)
        out.append({"alpha": bc.log_alpha[heads].exp().mean(0).numpy(),
                        "beta": bc.log_beta[heads].exp().mean(0).numpy(), "block": bc})  # fmt: skip
    return out
