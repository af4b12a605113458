"""Modules that own parameters: flat rotary rotation, LePE, PPMA attention, conv FFN.

The maths lives in ``ppma.masks``, the decay generators in ``ppma.decay``, the attention in ``ppma.ops``.
Token tensors inside a stage are channels-last, (B, H, W, C).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn as nn

from .decay import decay_for_mask
from .masks import RMT_STAGE_DECAYS, MaskKind, get_mask
from .ops import criss_cross_polyline_attention, log_mask_attention, polyline_attention, unmasked_attention

Mode = Literal["full", "criss_cross"]


class FlatRotary(nn.Module):
    """Rotary rotation over the flattened token index n = i * W + j (not 2D), design.md §5."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2))
        # Each angle twice: interleaved pairs (x0, x1) share one frequency.
        self.register_buffer("angle", angle.repeat_interleave(2), persistent=False)

    def forward(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """sin and cos tables, each (H, W, d)."""
        index = torch.arange(H * W, device=self.angle.device, dtype=self.angle.dtype).reshape(H, W, 1)
        phase = index * self.angle
        return torch.sin(phase), torch.cos(phase)


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_every_two(x) * sin, where rotate_every_two maps pairs (x0, x1) -> (-x1, x0)."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., d/2, 2)
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + turned * sin


class DWConv(nn.Module):
    """Depthwise conv with bias on channels-last tokens; the wrapper gives the published `.conv.*` keys."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, H, W, C) -> (B, C, H, W) -> conv -> (B, H, W, C)
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Projection(NamedTuple):
    """The inputs of a PPMA attention op, as ``PolylineAttention.project`` computes them."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    log_alpha: torch.Tensor
    log_beta: torch.Tensor


class PolylineAttention(nn.Module):
    """PPMA attention, design.md §5: q/k/v, flat rotary, the polyline-masked op, LePE, out_proj.

    Args:
        dim: channels C.
        num_heads: heads; head dimension d = C / heads.
        mode: ``"full"`` (2D mask, design.md §3) or ``"criss_cross"`` (decomposed, design.md §4).
        backend: attention backend name, see ``ppma.ops``.
        mask: zoo name (``ppma.masks.MASKS``); ``"polyline"`` is the published layer.
        rmt_decay: RMT's (initial_value, heads_range) for the ``rmt`` mask (``RMT_STAGE_DECAYS``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mode: Mode = "full",
        backend: str = "auto",
        mask: str | MaskKind = "polyline",
        rmt_decay: tuple[float, float] = RMT_STAGE_DECAYS[0],
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide dim {dim}")
        if mode not in ("full", "criss_cross"):
            raise ValueError(f"mode: expected 'full' or 'criss_cross', got {mode!r}")
        self.mask = get_mask(mask)
        if self.mask.full_only and mode != "full":
            raise ValueError(
                f"mask: {self.mask.name!r} is a 1D scan mask and needs full attention; a decomposed (criss-cross) "
                "block attends along rows and columns, which a scan order does not factor into "
                "(pass decomposed=False per stage)"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.mode = mode
        self.backend = backend
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = DWConv(dim, 5)
        self.out_proj = nn.Linear(dim, dim)
        self.decay = decay_for_mask(self.mask, dim, num_heads, rmt_decay)
        self._op, self._paths = self.mask.op(mode)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        # (B, H, W, C) -> (B, heads, H, W, d), a view
        return x.reshape(B, H, W, self.num_heads, self.head_dim).permute(0, 3, 1, 2, 4)

    def project(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> Projection:
        """What the attention op sees: (B, H, W, C) -> ``Projection(q, k, v, log_alpha, log_beta)``.

        ``q`` rotated, ``k`` scaled by d^-0.5 then rotated (as published), both (B, heads, H, W, d);
        ``v`` (B, heads, H, W, d), a view of the value projection; log-decays (B, heads, H, W), <= 0,
        from the layer's decay generator. ``forward`` runs the op on exactly these (``ppma.viz`` draws
        its pictures from them), so the op is called with ``scale=1.0``.
        """
        sin, cos = rotary
        q = rotate(self._heads(self.q_proj(x)), sin, cos)
        k = rotate(self._heads(self.k_proj(x) * self.scaling), sin, cos)  # scaled before rotation, as published
        log_alpha, log_beta = self.decay(x)
        return Projection(q, k, self._heads(self.v_proj(x)), log_alpha, log_beta)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        q, k, v, log_alpha, log_beta = self.project(x, rotary)
        lepe = self.lepe(v.permute(0, 2, 3, 1, 4).reshape(B, H, W, C))  # back to the projection's layout: a view
        out = self._attend(q, k, v, log_alpha, log_beta)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)  # merge heads
        return self.out_proj(out + lepe)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor
    ) -> torch.Tensor:
        """The op this layer's mask kind names (``MaskKind.op``); q, k, v (B, heads, H, W, d) -> (B, heads, H, W, d)."""
        if self._op == "log_masks":  # scan masks: stored dense log-masks, averaged softmaxes
            B, heads, H, W, _ = q.shape
            seq = [t.reshape(B, heads, H * W, -1) for t in (q, k, v)]  # tokens row-major
            out = log_mask_attention(*seq, self.mask.log_masks(log_alpha, log_beta), scale=1.0, backend=self.backend)
            return out.reshape(B, heads, H, W, -1)
        if self._op == "unmasked":
            return unmasked_attention(q, k, v, scale=1.0, backend=self.backend)
        op = polyline_attention if self._op == "full" else criss_cross_polyline_attention
        # Decays are <= 0 by construction: skip the value check and its device sync.
        return op(q, k, v, log_alpha, log_beta, scale=1.0, backend=self.backend, check_values=False, paths=self._paths)


class ConvFFN(nn.Module):
    """fc1 -> GELU -> (h + dwconv3x3(h)) -> fc2, design.md §6."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.dwconv = DWConv(hidden_dim, 3)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(h + self.dwconv(h))


class LayerScale(nn.Module):
    """Per-channel scale on a residual branch; gamma is (1, 1, 1, C) as published, so it is weight-decayed."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, 1, 1, dim), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
