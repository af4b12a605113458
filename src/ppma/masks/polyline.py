"""The pure log-mask maths: polyline path masks in log space and the paper's fast mask product (Theorem 2).

Plain functions on tensors, no module state. The ``unchecked_*`` forms skip argument checks, for
callers (the ops, the zoo) that validated their inputs already. Log-decays are <= 0; a mask entry is the sum of the
log-decays along the path between two tokens, so ``exp(mask)`` lies in (0, 1].

Naming: ``log_alpha`` holds the horizontal log-decays (summed along rows), ``log_beta`` the vertical
ones (summed along columns); both are (B, heads, H, W). Tokens are flattened row-major, n = i * W + j.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_log_decay, check_same_shape, check_tensor

__all__ = [
    "check_decays",
    "decay_dtype",
    "line_log_mask",
    "line_mask_matmul",
    "polyline_log_mask",
    "polyline_mask_matmul",
    "unchecked_line_log_mask",
    "unchecked_line_mask_matmul",
    "unchecked_polyline_log_mask",
    "unchecked_polyline_log_masks",
    "unchecked_polyline_mask_matmul",
]


def decay_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype log-decays and their prefix sums are accumulated in: float64 for float64, else float32.

    A prefix sum over hundreds of bf16 terms is wrong in the second digit, so never below float32;
    callers under autocast compute in this dtype with autocast off.
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def line_log_mask(x: torch.Tensor) -> torch.Tensor:
    """The 1D structured (1-semiseparable) mask of a line of log-decays, design.md §2.

    ``m[p, q] = sum(x[t] for t in (min(p, q), max(p, q)])``: the lower end is excluded, the upper
    included. For a 3-token line x = (x0, x1, x2)::

        [[ 0,        x1,  x1 + x2],
         [ x1,       0,   x2     ],
         [ x1 + x2,  x2,  0      ]]

    Computed as ``-|P[p] - P[q]|`` with the inclusive prefix sum ``P = cumsum(x)``.

    Args:
        x: log-decays of shape (..., n), every entry finite and <= 0.

    Returns:
        The log-mask, shape (..., n, n): symmetric, zero on the diagonal, <= 0.
    """
    check_tensor("x", x, min_ndim=1)
    check_log_decay("x", x)
    return unchecked_line_log_mask(x)


def unchecked_line_log_mask(x: torch.Tensor) -> torch.Tensor:
    """line_log_mask without checks; accumulates in at least float32."""
    cum = torch.cumsum(x, dim=-1, dtype=decay_dtype(x))
    return -(cum.unsqueeze(-1) - cum.unsqueeze(-2)).abs()


def check_decays(log_alpha: torch.Tensor, log_beta: torch.Tensor, check_values: bool = True) -> None:
    """Both (B, heads, H, W) of one shape, finite and <= 0 (values checked unless ``check_values`` is False)."""
    check_tensor("log_alpha", log_alpha, ndim=4)
    check_tensor("log_beta", log_beta, ndim=4)
    check_same_shape("log_alpha", log_alpha, "log_beta", log_beta)
    check_log_decay("log_alpha", log_alpha, check_values)
    check_log_decay("log_beta", log_beta, check_values)


def polyline_log_mask(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """The 2D polyline path log-mask M of full PPMA attention, design.md §3.

    ``M[(i, j), (k, l)] = row_i(j, l) + col_l(i, k)``: from the query (i, j) along its own row to the
    key's column l (horizontal log-decays of row i), then along column l to the key (vertical
    log-decays of column l). This is the horizontal-then-vertical (h2v) path; ``M.mT`` is v2h.
    On a 2x2 grid with a = log_alpha, b = log_beta, the row of query (0, 0) is::

        key (0, 0): 0             key (0, 1): a[0, 1]
        key (1, 0): b[1, 0]       key (1, 1): a[0, 1] + b[1, 1]

    Args:
        log_alpha: horizontal log-decays (B, heads, H, W), <= 0.
        log_beta: vertical log-decays (B, heads, H, W), <= 0.

    Returns:
        M of shape (B, heads, H*W, H*W); row = query, column = key, tokens row-major.
    """
    check_decays(log_alpha, log_beta)
    return unchecked_polyline_log_mask(log_alpha, log_beta)


def unchecked_polyline_log_mask(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """polyline_log_mask without checks."""
    B, heads, H, W = log_alpha.shape
    row = unchecked_line_log_mask(log_alpha)  # (B, heads, H, W, W): [i, j, l]
    col = unchecked_line_log_mask(log_beta.transpose(-1, -2))  # (B, heads, W, H, H): [l, i, k]
    col = col.permute(0, 1, 3, 4, 2)  # (B, heads, H, H, W): [i, k, l]
    # [i, j, k, l] = row[i, j, l] + col[i, k, l]
    mask = row.unsqueeze(-2) + col.unsqueeze(-3)
    return mask.reshape(B, heads, H * W, H * W)


def unchecked_polyline_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor, paths: str = "both") -> list:
    """``M`` (h2v) and/or ``M^T`` (v2h) for ``paths`` ("both", "h2v", "v2h"), each a contiguous
    (B, heads, N, N) tensor written in one pass from the line tables, for kernels that read a
    contiguous mask (SDPA): ``M.mT`` would be copied there, through a transposed read.

    ``M^T[(i, j), (k, l)] = M[(k, l), (i, j)] = row_k(l, j) + col_j(k, i)``, and the line masks are
    exactly symmetric (``-|P[p] - P[q]|``), so this equals ``polyline_log_mask(...).mT`` bit for bit.
    (``unchecked_polyline_log_mask`` keeps the published code's way, with its copy: the
    published-style baseline.)
    """
    B, heads, H, W = log_alpha.shape
    row = unchecked_line_log_mask(log_alpha)  # (B, heads, H, W, W): [i, j, l]
    col = unchecked_line_log_mask(log_beta.transpose(-1, -2).contiguous())  # (B, heads, W, H, H): [l, i, k]
    masks = []
    if paths in ("both", "h2v"):  # [i, j, k, l] = row[i, j, l] + col[l, i, k]
        col_ikl = col.permute(0, 1, 3, 4, 2).contiguous()  # small tables contiguous: the sum comes out row-major
        masks.append((row.unsqueeze(-2) + col_ikl.unsqueeze(-3)).reshape(B, heads, H * W, H * W))
    if paths in ("both", "v2h"):  # [i, j, k, l] = row[k, j, l] + col[j, i, k]
        row_jkl = row.transpose(2, 3).contiguous()
        col_ijk = col.transpose(2, 3).contiguous()
        masks.append((row_jkl.unsqueeze(2) + col_ijk.unsqueeze(-1)).reshape(B, heads, H * W, H * W))
    return masks


def line_mask_matmul(x: torch.Tensor, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``exp(line_log_mask(x)) @ v`` without forming the (n, n) mask.

    Mamba2's chunked semiseparable product, run once causally and once on the reversed line:
    dense (chunk, chunk) blocks inside a chunk, a (n/chunk, n/chunk) decay matrix between chunk
    states. Every exponent is <= 0, so nothing overflows. Memory is O(n * (chunk + d)).

    Args:
        x: log-decays (..., n), <= 0.
        v: values (..., n, d).
        chunk: chunk length; default ceil(sqrt(n)).

    Returns:
        (..., n, d) in the promoted dtype of x and v (at least float32).
    """
    check_tensor("x", x, min_ndim=1)
    check_tensor("v", v, min_ndim=2)
    check_log_decay("x", x)
    if v.shape[:-1] != x.shape:
        raise ValueError(f"v: expected shape {tuple(x.shape)} + (d,), got {tuple(v.shape)}")
    return unchecked_line_mask_matmul(x, v, chunk)


def unchecked_line_mask_matmul(x: torch.Tensor, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """line_mask_matmul without checks."""
    n = x.shape[-1]
    chunk = chunk or max(1, math.isqrt(n - 1) + 1 if n > 1 else 1)
    dtype = torch.promote_types(decay_dtype(x), v.dtype)
    x, v = x.to(dtype), v.to(dtype)
    lower = _causal_decay_matmul(x, v, chunk)
    # Upper triangle: sum over a[p+1..q] equals a causal product on the reversed line whose
    # log-decays are shifted by one: x_rev[r] = x[n - r] (x_rev[0] never enters a sum).
    x_rev = torch.cat([torch.zeros_like(x[..., :1]), x.flip(-1)[..., :-1]], dim=-1)
    upper = _causal_decay_matmul(x_rev, v.flip(-2), chunk).flip(-2)
    return lower + upper - v  # the diagonal (exp(0) = 1) was counted twice


def _causal_decay_matmul(x: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """y[p] = sum_{q <= p} exp(sum x[q+1..p]) v[q], chunked (Mamba2 SSD, minimal form)."""
    n, d = x.shape[-1], v.shape[-1]
    pad = (-n) % chunk
    if pad:  # trailing padding cannot reach earlier positions of a causal product
        x = torch.nn.functional.pad(x, (0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    T = x.shape[-1] // chunk
    x = x.reshape(*x.shape[:-1], T, chunk)  # (..., T, c)
    v = v.reshape(*v.shape[:-2], T, chunk, d)  # (..., T, c, d)
    cum = torch.cumsum(x, dim=-1)  # within-chunk prefix sums
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    seg = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~tril, float("-inf"))
    y = torch.exp(seg) @ v  # intra-chunk: (..., T, c, d)
    # State of each chunk at its last position, then carried across chunks.
    states = torch.einsum("...tc,...tcd->...td", torch.exp(cum[..., -1:] - cum), v)  # (..., T, d)
    chunk_cum = torch.cumsum(cum[..., -1], dim=-1)  # (..., T)
    start = chunk_cum - cum[..., -1]  # exclusive prefix: decay up to the start of chunk t
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    carry = (start.unsqueeze(-1) - chunk_cum.unsqueeze(-2)).masked_fill(~strict, float("-inf"))
    incoming = torch.exp(carry) @ states  # (..., T, d): state entering chunk t
    y = y + torch.exp(cum).unsqueeze(-1) * incoming.unsqueeze(-2)
    return y.reshape(*y.shape[:-3], T * chunk, d)[..., :n, :]


def polyline_mask_matmul(log_alpha: torch.Tensor, log_beta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``exp(M) @ x`` for the polyline mask M of ``polyline_log_mask``, without forming M.

    The paper's Theorem 2: since ``exp(M)[(i,j),(k,l)] = exp(row_i(j,l)) * exp(col_l(i,k))``,
    a pass along every column (vertical decays) followed by a pass along every row (horizontal
    decays) gives the product in O(N^1.5 d) time and O(N (d + sqrt(max(H, W)))) memory (chunked
    lines). For ``exp(M^T) @ x`` (the v2h path), call it on the transposed grid: ``log_alpha`` and
    ``log_beta`` swapped and transposed, tokens permuted to the transposed order.

    Args:
        log_alpha: horizontal log-decays (B, heads, H, W), <= 0.
        log_beta: vertical log-decays (B, heads, H, W), <= 0.
        x: (B, heads, H*W, d), tokens row-major.

    Returns:
        (B, heads, H*W, d) in the promoted dtype (at least float32).
    """
    check_decays(log_alpha, log_beta)
    check_tensor("x", x, ndim=4)
    B, heads, H, W = log_alpha.shape
    if x.shape[:3] != (B, heads, H * W):
        raise ValueError(f"x: expected shape (B, heads, H*W, d) = ({B}, {heads}, {H * W}, d), got {tuple(x.shape)}")
    return unchecked_polyline_mask_matmul(log_alpha, log_beta, x)


def unchecked_polyline_mask_matmul(log_alpha: torch.Tensor, log_beta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """polyline_mask_matmul without checks."""
    B, heads, H, W = log_alpha.shape
    d = x.shape[-1]
    grid = x.reshape(B, heads, H, W, d)
    # Column pass: z[i, l] = sum_k exp(col_l(i, k)) x[k, l]; lines are columns, (B, heads, W, H, d).
    z = unchecked_line_mask_matmul(log_beta.transpose(-1, -2), grid.transpose(2, 3))
    # Row pass: y[i, j] = sum_l exp(row_i(j, l)) z[i, l]; lines are rows, (B, heads, H, W, d).
    y = unchecked_line_mask_matmul(log_alpha, z.transpose(2, 3))
    return y.reshape(B, heads, H * W, d)
