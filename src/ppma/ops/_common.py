"""Helpers used unchanged by more than one backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def upcast(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Autocast off, half-precision tensors as float32; float32 and float64 pass unchanged."""
    device_type = tensors[0].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        yield tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


def prefix_sums(
    log_alpha: torch.Tensor, log_beta: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cum_alpha (cumsum over W) and cum_beta (cumsum over H), both (B, heads, H, W), in ``dtype``."""
    cum_alpha = torch.cumsum(log_alpha.to(dtype), dim=-1)
    cum_beta = torch.cumsum(log_beta.to(dtype), dim=-2)
    return cum_alpha, cum_beta
