"""Deliberately naive references, used only by tests: walk the path token by token in float64."""

from __future__ import annotations

import torch


def naive_line_log_mask(x: torch.Tensor) -> torch.Tensor:
    """m[p, q] = sum of x[t] for t in (min(p, q), max(p, q)], one entry at a time."""
    n = x.shape[-1]
    out = torch.zeros(*x.shape[:-1], n, n, dtype=torch.float64)
    x = x.double()
    for p in range(n):
        for q in range(n):
            lo, hi = min(p, q), max(p, q)
            for t in range(lo + 1, hi + 1):
                out[..., p, q] += x[..., t]
    return out


def naive_polyline_log_mask(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """Walk from query (i, j) along row i to column l, then along column l to row k."""
    B, heads, H, W = log_alpha.shape
    a, b = log_alpha.double(), log_beta.double()
    out = torch.zeros(B, heads, H * W, H * W, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            for k in range(H):
                for l in range(W):
                    total = torch.zeros(B, heads, dtype=torch.float64)
                    # horizontal leg on row i: the tokens entered when stepping from column j to l
                    step = 1 if l > j else -1
                    col = j
                    while col != l:
                        nxt = col + step
                        total += a[:, :, i, max(col, nxt)]
                        col = nxt
                    # vertical leg on column l: from row i to row k
                    step = 1 if k > i else -1
                    row = i
                    while row != k:
                        nxt = row + step
                        total += b[:, :, max(row, nxt), l]
                        row = nxt
                    out[:, :, i * W + j, k * W + l] = total
    return out
