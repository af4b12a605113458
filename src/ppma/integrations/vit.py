"""PPMA's mask in a plain timm ``VisionTransformer`` (the authors' DeiT-tiny experiment), in place.

``to_ppma(model)`` replaces every block's ``attn`` (timm ``Attention``) with ``PolylineViTAttention``:
the same q/k/v and output projections (same state-dict keys) plus a decay generator
(``attn.decay.*``), and ``attn.softmax(-1)`` replaced by the averaged two-softmax form of
design.md §3, ``0.5 softmax(S + M) + 0.5 softmax(S + M^T)`` (or any ``ppma.masks`` kind).

Prefix tokens (class, register and distillation tokens: the first ``num_prefix_tokens`` of the
sequence) are not on the grid. Rule: their rows and columns of every log-mask are 0, so a prefix
token attends to every token, and is attended by every token, without decay; among the grid tokens
the mask is the grid's. The decays are predicted from the grid tokens only (the block's normalised
input, as in PPMA). With every log-decay 0 the layer computes exactly timm's attention.

Attention dropout is not supported (the mask form has no dropout slot); ``to_ppma`` refuses it.
"""

from __future__ import annotations

import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from .._checks import check_tensor
from ..layers import decay_for_mask
from ..masks import MaskKind, get_mask
from ..ops import log_mask_attention

__all__ = ["PolylineViTAttention", "deit_tiny_ppma", "masked_token_attention", "to_ppma"]


def masked_token_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    log_beta: torch.Tensor,
    *,
    num_prefix_tokens: int = 0,
    mask: str | MaskKind = "polyline",
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """A zoo mask applied to token sequences: ``mean_i softmax(S + M_i) @ v`` with prefix tokens unmasked.

    Tokens are ``num_prefix_tokens`` prefix tokens, then the H x W grid row-major; the grid comes from
    the log-decays' shape. Each ``M_i`` of the kind (``ppma.masks``) is padded with zero rows and
    columns for the prefix tokens. For a 1x2 grid after one class token, the h2v mask is::

        [[0, 0,        0       ],     cls attends to all, all attend to cls, unmasked
         [0, 0,        a[0, 1] ],     grid tokens: the polyline mask of the grid
         [0, a[0, 1],  0       ]]

    Args:
        q, k: (B, heads, P + H*W, d).
        v: (B, heads, P + H*W, dv).
        log_alpha, log_beta: (B, heads, H, W) log-decays <= 0 (zeros for ``none``; RMT's constants for ``rmt``).
        num_prefix_tokens: P, the tokens before the grid.
        mask: zoo name or kind.
        scale: factor on q k^T; default d^-0.5.
        backend: ``"dense"``, ``"reference"`` or ``"auto"`` (see ``ppma.ops.log_mask_attention``).

    Returns:
        (B, heads, P + H*W, dv) in the dtype of q.
    """
    kind = get_mask(mask)
    check_tensor("q", q, ndim=4)
    for name, t in (("log_alpha", log_alpha), ("log_beta", log_beta)):
        check_tensor(name, t, ndim=4)
        if t.shape[:2] != q.shape[:2]:
            raise ValueError(
                f"{name}: shape {tuple(t.shape)} needs (B, heads) = {tuple(q.shape[:2])} and the grid (H, W)"
            )
    if log_beta.shape != log_alpha.shape:
        raise ValueError(f"log_beta: shape {tuple(log_beta.shape)} does not match log_alpha {tuple(log_alpha.shape)}")
    H, W = log_alpha.shape[-2:]
    N, P = q.shape[2], num_prefix_tokens
    if P < 0 or P + H * W != N:
        raise ValueError(f"num_prefix_tokens: {P} prefix tokens + a {H}x{W} grid = {P + H * W} tokens, but q has {N}")
    log_masks = kind.log_masks(log_alpha, log_beta)  # each (B, heads, H*W, H*W)
    if P:  # zero rows and columns for the prefix tokens: (B, heads, N, N)
        log_masks = [nn.functional.pad(m, (P, 0, P, 0)) for m in log_masks]
    return log_mask_attention(q, k, v, log_masks, scale=scale, backend=backend)


class _Grid:
    """The patch grid of the current forward, recorded by a pre-hook on ``patch_embed``, read by every layer."""

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None


class PolylineViTAttention(nn.Module):
    """timm ``Attention`` with a zoo mask on its grid tokens; built from an existing layer by ``to_ppma``.

    Keeps the original's ``qkv``, ``q_norm``, ``k_norm``, ``norm``, ``gate``, ``proj``, ``proj_drop``
    modules (so their state-dict keys are unchanged) and adds ``decay`` (``ppma.PathDecay`` for the
    learned kinds). Input and output (B, P + H*W, C).
    """

    def __init__(self, attn: Attention, grid: _Grid, num_prefix_tokens: int, mask: str | MaskKind = "polyline") -> None:
        super().__init__()
        if attn.attn_drop.p > 0:
            raise ValueError(
                f"attn_drop: attention dropout {attn.attn_drop.p} is not supported by the masked form; use 0"
            )
        if attn.head_dim * attn.num_heads != attn.qkv.in_features:
            raise ValueError(
                "attn: PPMA's decay generator reads each head's input channels; attn_head_dim must be dim / heads"
            )
        self.mask = get_mask(mask)
        self.num_heads, self.head_dim, self.attn_dim, self.scale = (
            attn.num_heads,
            attn.head_dim,
            attn.attn_dim,
            attn.scale,
        )
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.norm, self.gate, self.proj, self.proj_drop = (
            attn.norm,
            getattr(attn, "gate", None),
            attn.proj,
            attn.proj_drop,
        )
        self.decay = decay_for_mask(self.mask, attn.qkv.in_features, attn.num_heads)
        self._grid = grid
        self.backend = "auto"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """(B, P + H*W, C) -> (B, P + H*W, C)."""
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask: PolylineViTAttention takes no extra attention mask (the grid mask is its own)")
        if self._grid.size is None:
            raise ValueError(
                "grid: unknown; run the converted model (its patch_embed records the grid), not the layer alone"
            )
        B, N, C = x.shape
        H, W = self._grid.size
        P = self.num_prefix_tokens
        if N != P + H * W:
            raise ValueError(
                f"num_prefix_tokens: {P} prefix tokens + a {H}x{W} patch grid = {P + H * W}, but x has {N} tokens"
            )
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        log_alpha, log_beta = self.decay(x[:, P:].reshape(B, H, W, C))  # grid tokens only, (B, H, W, C)
        out = masked_token_attention(
            q, k, v, log_alpha, log_beta, num_prefix_tokens=P, mask=self.mask, scale=self.scale, backend=self.backend
        )
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))  # (B, heads, N, d) -> (B, N, C)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def to_ppma(
    model: VisionTransformer, mask: str | MaskKind = "polyline", num_prefix_tokens: int | None = None
) -> VisionTransformer:
    """Put a zoo mask into every attention layer of a timm ``VisionTransformer``, in place.

    Args:
        model: a timm ``VisionTransformer`` (e.g. ``vit_tiny_patch16_224``, DeiT-tiny's architecture)
            whose blocks have a timm ``Attention`` as ``attn`` and whose tokens are prefix tokens then
            the patch grid row-major.
        mask: zoo name (``ppma.masks.MASKS``); ``"polyline"`` is the paper's H2V + V2H.
        num_prefix_tokens: tokens before the grid; default (and the only accepted value) the model's own
            ``num_prefix_tokens`` (class + register tokens), so a wrong count fails here, not later.

    Returns:
        The same model, converted (decay parameters initialised as PPMA's).
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"model: expected a timm VisionTransformer, got {type(model).__name__}")  # noqa: TRY004  (user errors are ValueErrors)
    kind = get_mask(mask)
    own = model.num_prefix_tokens
    if num_prefix_tokens is not None and num_prefix_tokens != own:
        raise ValueError(
            f"num_prefix_tokens: the model has {own} prefix tokens (class/register), got {num_prefix_tokens}"
        )
    if getattr(model.patch_embed, "flatten", True) is False and not model.dynamic_img_size:
        raise ValueError("model: patch_embed does not give a row-major token grid")
    grid = _Grid()

    def record_grid(module: nn.Module, args: tuple) -> None:
        # (B, C, H_img, W_img) -> the patch grid the blocks will see.
        grid.size = tuple(module.dynamic_feat_size(args[0].shape[-2:]))

    model.patch_embed.register_forward_pre_hook(record_grid)
    for i, block in enumerate(model.blocks):
        if isinstance(block.attn, PolylineViTAttention):
            raise ValueError(f"model: block {i} is already converted")  # noqa: TRY004  (user errors are ValueErrors)
        if not isinstance(block.attn, Attention):
            raise ValueError(f"model: block {i}'s attn is {type(block.attn).__name__}, not timm's Attention")  # noqa: TRY004  (user errors are ValueErrors)
        block.attn = PolylineViTAttention(block.attn, grid, own, kind)
    model.ppma_mask = kind.name
    return model


@register_model
def deit_tiny_ppma(pretrained: bool = False, mask: str = "polyline", **kwargs) -> VisionTransformer:
    """DeiT-tiny (``deit_tiny_patch16_224``: patch 16, 192 wide, 12 blocks, 3 heads) with the polyline mask.

    ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)`` loads DeiT weights before the
    conversion (the decay generators start from PPMA's initialisation).
    """
    kwargs.pop("pretrained_cfg", None)  # ours has none; the DeiT base brings its own
    base = timm.create_model("deit_tiny_patch16_224", pretrained=pretrained, **kwargs)
    return to_ppma(base, mask=mask)
