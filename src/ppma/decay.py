"""The decay generators: where a layer's log-decays come from, (B, H, W, C) -> log_alpha, log_beta.

Each returns two (B, heads, H, W) tensors <= 0 (horizontal, vertical), accumulated in float32 (float64
for float64 input) with autocast off (``ppma.masks.polyline.decay_dtype``):

- ``PathDecay``: learned per token from the layer input (the published ``path_embed``);
- ``FixedDecay``: RMT's constant per-head gamma, no parameters;
- ``NoDecay``: zeros (the ``none`` mask);
- ``decay_for_mask``: the generator a mask kind of ``ppma.masks`` names.

Initial values of ``PathDecay`` come from its own random stream (``decay_generator``), so that two
models built at one seed with different mask kinds share every other initial weight (paired ablations).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masks.polyline import decay_dtype
from .masks.zoo import RMT_STAGE_DECAYS, MaskKind, get_mask, rmt_log_gamma

__all__ = ["DecayLinear", "FixedDecay", "NoDecay", "PathDecay", "decay_for_mask", "decay_generator", "decay_precision"]


@contextlib.contextmanager
def decay_precision(x: torch.Tensor) -> Iterator[torch.dtype]:
    """Autocast off; yields the dtype log-decays are computed in (``decay_dtype``: float32, float64 stays)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield decay_dtype(x)


def decay_generator() -> torch.Generator:
    """A CPU generator seeded from the global CPU RNG state, without drawing from it.

    Decay generators draw their initial values here, so building one leaves the global stream where
    it was: at one seed, models with and without a learned decay get the same other weights.
    """
    digest = hashlib.blake2b(torch.get_rng_state().numpy().tobytes(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


class DecayLinear(nn.Linear):
    """``nn.Linear`` whose construction draws nothing: ``PathDecay.reset_parameters`` sets its weight.

    Network-wide initialisers (``PPMA._init_weights``) skip it for the same reason.
    """

    def reset_parameters(self) -> None:
        pass


class PathDecay(nn.Module):
    """Per-token horizontal and vertical log-decays, design.md §1.

    One ``dt_linear`` (d -> 2, no bias) shared by all heads reads each head's channels; channel 0
    drives the horizontal decay, channel 1 the vertical one. ``log = softplus(dt + dt_bias) * a`` with
    ``a = -exp(A_log)`` per head, computed in float32 (float64 for float64 input), autocast off.

    ``channels=1`` (the ``polyline_shared`` mask) predicts one decay used for both directions.
    """

    def __init__(self, dim: int, num_heads: int, channels: int = 2) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise ValueError(f"channels: expected 1 (shared) or 2 (horizontal, vertical), got {channels}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dt_linear = DecayLinear(self.head_dim, channels, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba2's initialisation: dt log-uniform in [1e-3, 1e-1], dt_bias its inverse softplus, A in [1, 1.1];
        ``dt_linear`` trunc-normal(0.02) as the published network-wide init. Drawn from ``decay_generator()``."""
        gen = decay_generator()
        dt = torch.empty(self.num_heads).uniform_(math.log(1e-3), math.log(1e-1), generator=gen).exp().clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(self.num_heads).uniform_(1.0, 1.1, generator=gen)))
        weight = torch.empty(self.dt_linear.weight.shape)
        self.dt_linear.weight.copy_(nn.init.trunc_normal_(weight, std=0.02, generator=gen))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> log_alpha, log_beta, each (B, heads, H, W) float32, <= 0."""
        B, H, W, _ = x.shape
        dt = self.dt_linear(x.reshape(B, H, W, self.num_heads, self.head_dim))  # (B, H, W, heads, channels)
        # Contiguous in the output layout before the element-wise ops: their backward then has one
        # layout in eager and traced runs (aot_eager failed on a view of a permuted softplus gradient).
        dt = dt.permute(0, 3, 4, 1, 2).contiguous()  # (B, heads, channels, H, W)
        with decay_precision(x) as dtype:
            a = -torch.exp(self.A_log.to(dtype))[:, None, None, None]
            log_decay = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype)[:, None, None, None]) * a
        return log_decay[:, :, 0], log_decay[:, :, -1]  # one channel: the same decay both ways


class FixedDecay(nn.Module):
    """RMT's data-independent decay: (B, H, W, C) -> constant log_alpha = log_beta = log(gamma_h).

    No parameters; the per-head table is a non-persistent float64 buffer, so state dicts equal the
    ``none`` kind's (no decay generator). Decays come out in float32, or float64 for float64 input.
    """

    def __init__(self, num_heads: int, init_value: float = 2.0, heads_range: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.register_buffer("log_gamma", rmt_log_gamma(num_heads, init_value, heads_range), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> log_alpha, log_beta, each (B, heads, H, W) float32 (float64 for float64 x)."""
        B, H, W, _ = x.shape
        log = self.log_gamma.to(decay_dtype(x))[None, :, None, None].expand(B, self.num_heads, H, W)
        return log, log


class NoDecay(nn.Module):
    """No decay: (B, H, W, C) -> zero log_alpha, log_beta; no parameters."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> log_alpha, log_beta, each (B, heads, H, W) zeros, float32 (float64 for float64 x)."""
        B, H, W, _ = x.shape
        zero = x.new_zeros(B, self.num_heads, H, W, dtype=decay_dtype(x))
        return zero, zero


def decay_for_mask(
    kind: str | MaskKind, dim: int, num_heads: int, rmt_decay: tuple[float, float] = RMT_STAGE_DECAYS[0]
) -> nn.Module:
    """The decay source of a mask kind, (B, H, W, C) -> log_alpha, log_beta (B, heads, H, W):
    ``PathDecay`` (2 channels, or 1 for ``polyline_shared``), RMT's fixed gammas, or zeros."""
    kind = get_mask(kind)
    if kind.decay == "learned":
        return PathDecay(dim, num_heads)
    if kind.decay == "shared":
        return PathDecay(dim, num_heads, channels=1)
    if kind.decay == "fixed":
        return FixedDecay(num_heads, *rmt_decay)
    return NoDecay(num_heads)
