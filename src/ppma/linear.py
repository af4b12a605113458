"""Polyline-masked linear attention, never forming N x N, in two forms named for what they compute.

With ``L = exp(M)`` the polyline mask of full PPMA attention (h2v; ``L^T`` is v2h):

- ``masked_linear_attention(q, k, v, log_alpha, log_beta)``: the rebuttal's form, exactly
  ``((Q K^T) * L) V``: no feature map, no normaliser (Mamba2's structured masked attention with
  the 2D polyline mask in place of the 1D one);
- ``polyline_linear_attention(...)``: the normalised variant
  ``((phi(Q) phi(K)^T) * L) V / ((phi(Q) phi(K)^T) * L) 1`` with ``phi = elu + 1``, a linear
  transformer's form (positive features, rows summing to one); ``feature_map=None`` and
  ``normalize=False`` turn it into the rebuttal's form.

Since ``(q_i . k_j) L_ij v_j = q_i^T (L_ij k_j v_j^T)``, both come from ONE mask product
``L @ [K (x) V | K]`` per path (the normaliser column only when normalised), done by
``ppma.polyline_mask_matmul`` (the paper's Theorem 2: a column pass then a row pass) in
O(N^1.5 d dv) time and O(N d dv) memory. ``paths="both"`` averages the h2v (``L``) and v2h
(``L^T``) outputs, as PPMA averages its two softmaxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_grid_attention
from .decay import PathDecay
from .masks.polyline import polyline_mask_matmul

__all__ = ["PolylineLinearAttention", "elu_feature_map", "masked_linear_attention", "polyline_linear_attention"]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive features (Katharopoulos et al., 2020), so the normaliser is positive."""
    return F.elu(x) + 1


def _grid_transpose(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, H, W, ...) -> (B, heads, W, H, ...): the v2h path is the h2v path of the transposed grid."""
    return t.transpose(2, 3)


def _masked_sums(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    log_beta: torch.Tensor,
    eps: float,
    normalize: bool = True,
) -> torch.Tensor:
    """One path (h2v of this grid): ``(phi_q phi_k^T * L) v``, divided by ``(phi_q phi_k^T * L) 1 + eps``
    when ``normalize``. Each tensor is (B, heads, H, W, .).
    """
    B, heads, H, W, d = phi_k.shape
    dv = v.shape[-1]
    kv = (phi_k.unsqueeze(-1) * v.unsqueeze(-2)).reshape(B, heads, H * W, d * dv)  # phi(k_j) v_j^T, flattened
    if normalize:  # the normaliser's column rides along in the same product
        kv = torch.cat([kv, phi_k.reshape(B, heads, H * W, d)], dim=-1)  # (B, heads, N, d*dv + d)
    summed = polyline_mask_matmul(log_alpha, log_beta, kv)  # L @ [phi(K) (x) V | phi(K)], never N x N
    q = phi_q.reshape(B, heads, H * W, d).to(summed.dtype)
    if not normalize:
        return torch.einsum("bhnd,bhnde->bhne", q, summed.reshape(B, heads, H * W, d, dv)).reshape(B, heads, H, W, dv)
    state, norm = summed.split([d * dv, d], dim=-1)
    num = torch.einsum("bhnd,bhnde->bhne", q, state.reshape(B, heads, H * W, d, dv))
    den = torch.einsum("bhnd,bhnd->bhn", q, norm)
    return (num / (den.unsqueeze(-1) + eps)).reshape(B, heads, H, W, dv)


def polyline_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    log_beta: torch.Tensor,
    *,
    paths: str = "both",
    feature_map=elu_feature_map,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Linear attention masked by the polyline mask ``L = exp(M)``, normalised per query (by default).

    Cost O(N^1.5 d dv) time and O(N d dv) memory per path (through ``polyline_mask_matmul``).
    For a 1x2 grid with ``a = log_alpha[0, 1]``, ``L = [[1, e^a], [e^a, 1]]``; query 0's output is
    ``(s00 v0 + s01 e^a v1) / (s00 + s01 e^a + eps)`` with ``s_ij = phi(q_i) . phi(k_j)``.

    Args:
        q, k: (B, heads, H, W, d) on the token grid.
        v: (B, heads, H, W, dv).
        log_alpha, log_beta: (B, heads, H, W) horizontal and vertical log-decays, <= 0.
        paths: ``"both"`` (average of the h2v and v2h outputs), ``"h2v"`` (``L``) or ``"v2h"`` (``L^T``).
        feature_map: phi, applied to q and k (non-negative features keep the normaliser positive);
            ``None`` uses q and k as they are.
        normalize: divide by the masked row sums ``((phi(Q) phi(K)^T) * L) 1 + eps``; ``False`` with
            ``feature_map=None`` is the rebuttal's ``((Q K^T) * L) V`` (``masked_linear_attention``).
        eps: added to the normaliser.

    Returns:
        (B, heads, H, W, dv) in the dtype of q (computed in at least float32).
    """
    check_grid_attention(q, k, v, log_alpha, log_beta)
    if paths not in ("both", "h2v", "v2h"):
        raise ValueError(f"paths: expected 'both', 'h2v' or 'v2h', got {paths!r}")
    phi_q, phi_k = (q, k) if feature_map is None else (feature_map(q), feature_map(k))
    outs = []
    if paths in ("both", "h2v"):
        outs.append(_masked_sums(phi_q, phi_k, v, log_alpha, log_beta, eps, normalize))
    if paths in ("both", "v2h"):  # L^T on this grid = L on the transposed grid with the decays swapped
        t = _grid_transpose
        alpha_t, beta_t = log_beta.transpose(-1, -2), log_alpha.transpose(-1, -2)
        outs.append(t(_masked_sums(t(phi_q), t(phi_k), t(v), alpha_t, beta_t, eps, normalize)))
    return (sum(outs) / len(outs)).to(q.dtype)


def masked_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    log_beta: torch.Tensor,
    *,
    paths: str = "both",
) -> torch.Tensor:
    """The rebuttal's masked linear attention, exactly: ``((Q K^T) * L) V`` with ``L = exp(M)``.

    No feature map, no normaliser (so outputs are not convex combinations of values). Cost
    O(N^1.5 d dv) time and O(N d dv) memory per path, through ``polyline_mask_matmul``; never N x N.
    Arguments as ``polyline_linear_attention``; ``paths="both"`` averages the ``L`` and ``L^T`` outputs.
    """
    return polyline_linear_attention(q, k, v, log_alpha, log_beta, paths=paths, feature_map=None, normalize=False)


class PolylineLinearAttention(nn.Module):
    """A linear-attention layer with the polyline mask: q/k/v projections, ``PathDecay``, the masked op, out_proj.

    Args:
        dim: channels C.
        num_heads: heads; head dimension d = C / heads.
        paths: ``"both"``, ``"h2v"`` or ``"v2h"`` (see ``polyline_linear_attention``).
    """

    def __init__(self, dim: int, num_heads: int, paths: str = "both") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide dim {dim}")
        self.num_heads, self.head_dim, self.paths = num_heads, dim // num_heads, paths
        self.qkv = nn.Linear(dim, 3 * dim)
        self.decay = PathDecay(dim, num_heads)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        # (B, H, W, 3C) -> (3, B, heads, H, W, d)
        q, k, v = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        log_alpha, log_beta = self.decay(x)
        out = polyline_linear_attention(q, k, v, log_alpha, log_beta, paths=self.paths)
        return self.out_proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))  # merge heads
