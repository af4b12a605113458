"""FlexAttention with the polyline mask formed on the fly from prefix-sum tables (full attention).

The score_mod adds ``M[(i,j),(k,l)] = -|cum_alpha[i,j] - cum_alpha[i,l]| - |cum_beta[i,l] - cum_beta[k,l]|``
(and the mirrored v2h term in a second call; ``paths="h2v"``/``"v2h"`` make only that call). Each
captured table is indexed once per score_mod: FlexAttention's backward refuses a tensor that needs
grad and is gathered twice, so every term gets its own copy. Gradients flow into the log-decays through the tables.

Limits: full attention only (every ``paths``); on CPU, torch runs the forward but refuses the backward.
"""

from __future__ import annotations

import torch

from ..masks.polyline import decay_dtype
from ._common import prefix_sums


def _flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


_compiled = None


def _flex_for(device: torch.device):
    """Compiled FlexAttention on CUDA (eager is a slow reference there); eager on CPU."""
    global _compiled
    if device.type != "cuda":
        return _flex_attention()
    if _compiled is None:
        _compiled = torch.compile(_flex_attention(), dynamic=False)
    return _compiled


def full(q, k, v, log_alpha, log_beta, scale: float, paths: str = "both") -> torch.Tensor:
    B, heads, H, W, d = q.shape
    N = H * W
    flex = _flex_for(q.device)
    cum_alpha, cum_beta = prefix_sums(log_alpha, log_beta, decay_dtype(q))
    # One table per indexing site (see module docstring): flat (B, heads, N) or grid (B, heads, H, W).
    alpha_q, alpha_k = cum_alpha.reshape(B, heads, N), cum_alpha.reshape(B, heads, N).clone()
    alpha_h2v, alpha_v2h = cum_alpha.clone(), cum_alpha.clone()
    beta_q, beta_k = cum_beta.reshape(B, heads, N).clone(), cum_beta.reshape(B, heads, N).clone()
    beta_h2v, beta_v2h = cum_beta.clone(), cum_beta.clone()

    def h2v(score, b, h, q_idx, kv_idx):
        i, key_col = q_idx // W, kv_idx % W  # corner of the path: query row, key column
        row = (alpha_q[b, h, q_idx] - alpha_h2v[b, h, i, key_col]).abs()
        col = (beta_h2v[b, h, i, key_col] - beta_k[b, h, kv_idx]).abs()
        return score - row - col

    def v2h(score, b, h, q_idx, kv_idx):
        k_row, j = kv_idx // W, q_idx % W  # corner: key row, query column
        col = (beta_q[b, h, q_idx] - beta_v2h[b, h, k_row, j]).abs()
        row = (alpha_v2h[b, h, k_row, j] - alpha_k[b, h, kv_idx]).abs()
        return score - row - col

    shape = (B, heads, N, -1)
    q, k, v = (t.reshape(shape) for t in (q, k, v))  # tokens row-major
    if paths != "both":  # one path: one call, no masks stored either way
        return flex(q, k, v, score_mod=h2v if paths == "h2v" else v2h, scale=scale).reshape(B, heads, H, W, -1)
    out_h2v = flex(q, k, v, score_mod=h2v, scale=scale)
    out_v2h = flex(q, k, v, score_mod=v2h, scale=scale)
    return (0.5 * (out_h2v + out_v2h)).reshape(B, heads, H, W, -1)
