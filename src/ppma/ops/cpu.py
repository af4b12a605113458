"""The fastest correct CPU path: explicit batched matmuls, each score matrix formed once, few passes over the scores.

On CPU the score-sized passes (N x N for full attention, N x sqrt(N) per direction for decomposed
attention) cost more than the matrix products, so this path counts them (benchmarks/bench_ops.py,
BENCHMARKS.md):

- full: ``S = q k^T`` once for both softmaxes; the path distances ``-M`` are written once, in
  row-major token order, and M^T is read through strides; the two softmaxes are summed before one
  product with v. Above ``MAX_SCORE_BYTES`` per score tensor it runs blocks of query grid rows, each
  with its rows of M and M^T built from the line tables, so memory stays bounded at any N.
- criss-cross: the mask enters as ``baddbmm(dist, q, k^T, beta=-1)``: the product writes straight
  onto the path distances ``|P[p] - P[q]|`` (P the prefix sums), so scores, scale and mask take one
  pass, not four (matmul, scale, distance, subtract); then one softmax. (For full attention this
  would need a second product, ``k q^T``, for M^T: measured slower than one product and a strided
  read.) Rows and columns are batches of 3D sequences, ``(B*heads*H, W, d)`` and
  ``(B*heads*W, H, d)``; ``out = 0.5 * Ah (Aw v) + 0.5 * Aw (Ah v)`` takes three products, not four:
  the row product runs once on ``[v | Ah v]``. Memory is O(N^1.5) like ``dense``; above
  ``MAX_SCORE_BYTES`` the (batch, head) pairs run a slice at a time.

Runs in float64 when given float64; half-precision inputs are upcast to float32 (autocast off), so
log-decays, prefix sums and masks stay at least float32. Autograd does the backward.

Inference (no input needs a gradient) computes the same numbers in place and in cache-sized slices
(``INFERENCE_SCORE_BYTES``): the distances, scores and softmaxes overwrite one another instead of
each taking a fresh score-sized buffer, and a slice's passes find it in cache. A fresh buffer costs
a pass and, above glibc's mmap threshold (32 MiB at most), a page fault per 4 KiB on first write. So
full attention needs no stored N x N mask at any size, and beats SDPA with one (BENCHMARKS.md).
"""

from __future__ import annotations

import torch

from ._common import upcast

# Budget of one score-sized tensor: larger attention runs a slice at a time (query grid rows for full
# attention, (batch, head) pairs for decomposed), so a 2048x2048 input fits a laptop; PPMA at 224 and
# small batches stays far below it and runs in one piece.
MAX_SCORE_BYTES = 2**28
# Inference (nothing kept for a backward) runs slices of about this size instead, so that the scores, the
# distances and the softmaxes of a slice stay in the CPU's caches between their passes: measured 1.2-2x
# faster per op than one piece from 24x24 tokens or batch 8 up, and no slower below (BENCHMARKS.md).
INFERENCE_SCORE_BYTES = 2**21


def _score_budget(inplace: bool) -> int:
    return min(MAX_SCORE_BYTES, INFERENCE_SCORE_BYTES) if inplace else MAX_SCORE_BYTES


def _inference(*tensors: torch.Tensor) -> bool:
    """True when no autograd graph is recorded through these tensors: buffers may then be reused in place."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _softmax(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Softmax over the last dim; ``inplace`` overwrites ``x`` (contiguous, ours) with it."""
    if inplace:  # out= the input: the kernel reads each element before writing it
        return torch.ops.aten._softmax.out(x, -1, False, out=x)
    return torch.softmax(x, dim=-1)


def _line_distance(x: torch.Tensor, dtype: torch.dtype, inplace: bool = False) -> torch.Tensor:
    """``-line_log_mask(x)`` = |P[p] - P[q]| with ``P = cumsum(x)`` in ``dtype`` (at least float32), (..., n, n)."""
    # x contiguous first (it is small): a transposed x would give a transposed (n, n) table, copied on reshape
    cum = torch.cumsum(x.contiguous(), dim=-1, dtype=dtype)
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)
    return diff.abs_() if inplace else diff.abs()


def _masked_scores(dist: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, inplace: bool) -> torch.Tensor:
    """``scale * q k^T - dist`` in one pass over the (.., n, n) output; ``inplace`` writes it over ``dist``."""
    if inplace:  # out-of-place baddbmm first copies dist into a fresh buffer
        return dist.baddbmm_(q, k.transpose(1, 2), beta=-1, alpha=scale)
    return torch.baddbmm(dist, q, k.transpose(1, 2), beta=-1, alpha=scale)


def _score_bytes(dtype: torch.dtype) -> int:
    """Bytes per score element once half precision is upcast."""
    return 8 if dtype == torch.float64 else 4


def full(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    B, heads, H, W, _ = q.shape
    bh, N = B * heads, H * W
    inplace = _inference(q, k, v, log_alpha, log_beta)
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(bh, N, -1) for t in (q, k, v))  # tokens row-major
        row = _line_distance(log_alpha, q.dtype, inplace).reshape(bh, H, W, W)  # row i: [i, j, l]
        col = _line_distance(log_beta.transpose(-1, -2), q.dtype, inplace).reshape(bh, W, H, H)  # col l: [l, i, k]
        col_ikl = col.permute(0, 2, 3, 1).contiguous()  # [i, k, l]
        rows_per_block = max(1, _score_budget(inplace) // (_score_bytes(q.dtype) * bh * W * N))
        if rows_per_block >= H:  # all at once: M written once, M^T read through strides
            dist = (row.unsqueeze(-2) + col_ikl.unsqueeze(-3)).reshape(bh, N, N)  # [(i, j), (k, l)]
            dists = _on_paths(dist, dist.transpose(1, 2), paths)
            return _softmaxes(q, k, v, dists, scale, inplace).reshape(B, heads, H, W, -1)
        # Blocks of query grid rows, each with its rows of M and of M^T (both built from the line tables):
        # M^T[(i,j),(k,l)] = M[(k,l),(i,j)] = row[k, l, j] + col[j, k, i]  (the line masks are symmetric)
        row_jkl = row.permute(0, 3, 1, 2).contiguous().unsqueeze(1)  # [., j, k, l]
        col_ijk = col.permute(0, 2, 1, 3).contiguous().unsqueeze(-1)  # [i, j, k, .]
        outs = []
        for i0 in range(0, H, rows_per_block):
            i1 = min(H, i0 + rows_per_block)
            dist = (row[:, i0:i1].unsqueeze(-2) + col_ikl[:, i0:i1].unsqueeze(-3)).reshape(bh, -1, N)
            dist_t = (row_jkl + col_ijk[:, i0:i1]).reshape(bh, -1, N)
            outs.append(_softmaxes(q[:, i0 * W : i1 * W], k, v, _on_paths(dist, dist_t, paths), scale, inplace))
        return torch.cat(outs, dim=1).reshape(B, heads, H, W, -1)


def _on_paths(dist, dist_t, paths: str) -> list:
    """The path distances a ``paths`` value averages over: M (h2v), M^T (v2h) or both."""
    return {"both": [dist, dist_t], "h2v": [dist], "v2h": [dist_t]}[paths]


def _softmaxes(q, k, v, dists, scale: float, inplace: bool = False) -> torch.Tensor:
    """``mean_i softmax(S - dist_i) @ v`` with ``S = scale * q k^T`` formed once (one or two distances).

    ``inplace``: the same numbers with two score-sized buffers instead of seven: the last distance is
    subtracted from S in place, the other into one fresh buffer, each softmax overwrites its input.
    """
    scores = torch.bmm(q, k.transpose(1, 2))
    if not inplace:
        if scale != 1.0:
            scores = scores * scale
        if len(dists) == 1:
            return torch.bmm(torch.softmax(scores - dists[0], dim=-1), v)
        attn = torch.softmax(scores - dists[0], dim=-1) + torch.softmax(scores - dists[1], dim=-1)
        return torch.bmm(attn, v) * 0.5
    if scale != 1.0:
        scores.mul_(scale)
    probs = [torch.sub(scores, d) for d in dists[:-1]] + [scores.sub_(dists[-1])]  # S read before overwritten
    probs = [_softmax(p, inplace=True) for p in probs]
    if len(probs) == 1:
        return torch.bmm(probs[0], v)
    return torch.bmm(probs[0].add_(probs[1]), v).mul_(0.5)


def unmasked(q, k, v, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T) @ v`` over the grid's tokens, as explicit batched matmuls."""
    B, heads, H, W, _ = q.shape
    with upcast(q, k, v) as (q, k, v):
        q, k, v = (t.reshape(B * heads, H * W, -1) for t in (q, k, v))  # tokens row-major
        scores = torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), beta=0, alpha=scale)
        attn = _softmax(scores, inplace=_inference(q, k, v))
        return torch.bmm(attn, v).reshape(B, heads, H, W, -1)


def criss_cross(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    B, heads, H, W, _ = q.shape
    inplace = _inference(q, k, v, log_alpha, log_beta)
    per_head = _score_bytes(q.dtype) * H * W * (H + W)  # row and column scores of one (batch, head)
    step = max(1, _score_budget(inplace) // per_head)
    if step >= B * heads:
        return _criss_cross(q, k, v, log_alpha, log_beta, scale, paths, inplace)
    # (batch, head) pairs are independent: a slice of them at a time, as a batch of one-head grids
    parts = [t.flatten(0, 1).unsqueeze(1) for t in (q, k, v, log_alpha, log_beta)]
    outs = [_criss_cross(*(t[i : i + step] for t in parts), scale, paths, inplace) for i in range(0, B * heads, step)]
    return torch.cat(outs).reshape(B, heads, H, W, -1)


def _criss_cross(q, k, v, log_alpha, log_beta, scale: float, paths: str, inplace: bool) -> torch.Tensor:
    B, heads, H, W, _ = q.shape
    dv = v.shape[-1]
    rows, cols = B * heads * H, B * heads * W

    def to_cols(t):  # row sequences (B*heads*H, W, c) or the grid (B, heads, H, W, c) -> columns (B*heads*W, H, c)
        return t.reshape(B * heads, H, W, -1).transpose(1, 2).reshape(cols, H, -1)

    def cols_to_rows(t):  # (B*heads*W, H, c) -> row sequences (B*heads*H, W, c)
        return t.reshape(B * heads, W, H, -1).transpose(1, 2).reshape(rows, W, -1)

    with upcast(q, k, v) as (q, k, v):
        row_dist = _line_distance(log_alpha, q.dtype, inplace).reshape(rows, W, W)  # row i: [j, l]
        col_dist = _line_distance(log_beta.transpose(-1, -2), q.dtype, inplace).reshape(cols, H, H)  # column j: [i, k]
        q_rows, k_rows, v_rows = (t.reshape(rows, W, -1) for t in (q, k, v))
        attn_w = _softmax(_masked_scores(row_dist, q_rows, k_rows, scale, inplace), inplace)
        attn_h = _softmax(_masked_scores(col_dist, to_cols(q), to_cols(k), scale, inplace), inplace)
        if paths == "h2v":  # Aw (Ah v): the query's path leaves along its row
            cols_v = cols_to_rows(torch.bmm(attn_h, to_cols(v)))
            return torch.bmm(attn_w, cols_v).reshape(B, heads, H, W, dv)
        if paths == "v2h":  # Ah (Aw v)
            return cols_to_rows(torch.bmm(attn_h, to_cols(torch.bmm(attn_w, v_rows)))).reshape(B, heads, H, W, dv)
        cols_v = cols_to_rows(torch.bmm(attn_h, to_cols(v)))  # Ah v
        # One row product serves both orders: Aw [v | Ah v].
        rows_both = torch.bmm(attn_w, torch.cat([v_rows, cols_v], dim=-1))
        rows_v, rows_cols_v = rows_both.split(dv, dim=-1)
        cols_rows_v = cols_to_rows(torch.bmm(attn_h, to_cols(rows_v)))  # Ah (Aw v)
        return (0.5 * (cols_rows_v + rows_cols_v)).reshape(B, heads, H, W, dv)
