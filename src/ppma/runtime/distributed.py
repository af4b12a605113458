"""Processes and devices: the one way a run knows its rank.

One home for: joining and leaving the process group that ``torchrun`` describes (NCCL on CUDA,
Gloo on CPU), the ``DistInfo`` record of where this process sits, device picking, seeding,
the autocast context, rank-0-first sections and unwrapping DDP / ``torch.compile`` wrappers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..cpu_units import require_cpu_amp

__all__ = [
    "DistInfo",
    "amp_dtype_for",
    "autocast",
    "cleanup_distributed",
    "is_main_process",
    "main_process_first",
    "pick_device",
    "setup_distributed",
    "unwrap",
]  # fmt: skip


@dataclass
class DistInfo:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this machine; the GPU index under ``torchrun``.
        device: the device this process computes on.
        owns_group: True when ``setup_distributed`` started the process group (so it also ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum numbers over all processes (in float64 on this process's device).

        Args:
            values: this process's numbers.

        Returns:
            The element-wise sums over processes (``values`` itself in a single process).
        """
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for all processes (a no-op in a single process)."""
        if self.distributed:
            dist.barrier()


def _env_ranks() -> tuple[int, int, int]:
    """(world size, rank, local rank) as ``torchrun`` sets them; (1, 0, 0) in a plain process."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (of the process group if one is up, else of the ``torchrun`` launch) or in a single process.

    Inside a run use ``DistInfo.is_main``; this is for code outside it (a command printing its summary).
    """
    return (dist.get_rank() if dist.is_initialized() else _env_ranks()[1]) == 0


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The device a device string names.

    Args:
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or any
            other ``torch.device`` string.
        local_rank: the GPU index that ``"auto"`` / ``"cuda"`` (no index) resolve to.

    Returns:
        ``cuda:local_rank`` for ``"auto"`` with CUDA and for ``"cuda"``; ``torch.device(device)`` otherwise.

    Raises:
        ValueError: (one line) an unknown device string, or a device this machine does not have (CUDA
            without a GPU, a GPU index past the last one, ``mps`` off a Mac, ...).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", local_rank) if dev.index is None else dev
    if dev.type != "cpu":  # mps, xpu, ...: only where torch has that backend and it is usable here
        modules = (getattr(torch, dev.type, None), getattr(torch.backends, dev.type, None))
        if not any(callable(getattr(m, "is_available", None)) and m.is_available() for m in modules):
            raise ValueError(f"device: {device!r} is not available here; expected auto, cpu, cuda or cuda:N")
    return dev


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK).

    Without those variables this is a single-process run. CUDA runs use NCCL and one GPU per local
    rank (the current CUDA device is set to it); CPU runs use Gloo.

    Args:
        device: see ``pick_device``; under ``torchrun`` a CUDA device is always the local rank's GPU.

    Returns:
        The process's ``DistInfo``; ``owns_group`` says whether this call started the group.

    Raises:
        ValueError: a CUDA device is asked for but CUDA is not available.
    """
    world_size, rank, local_rank = _env_ranks()
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        if world_size > 1:  # one GPU per process, whatever index was asked for
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
        owns = True
    return DistInfo(rank, world_size, local_rank, dev, owns)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if ``setup_distributed`` started it (a caller's own group stays)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp``: ``"auto"`` (bf16 on CUDA when supported, full precision on CPU),
    ``"none"``, ``"bf16"`` or ``"fp16"``; a one-line ValueError for a half type this CPU has no units for."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if device.type == "cpu":
        require_cpu_amp(dtype)
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | bool | None) -> contextlib.AbstractContextManager:
    """Autocast on ``device``'s type, or a no-op.

    Args:
        device: where the computation runs (CPU or CUDA).
        dtype: the autocast dtype; ``True`` means bf16; ``None`` or ``False``: full precision (no-op).
    """
    if dtype is True:
        dtype = torch.bfloat16
    if dtype is None or dtype is False:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. writes a built-in data set), the other ranks after it."""
    if info.distributed and not info.is_main:
        dist.barrier()
    yield
    if info.distributed and info.is_main:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP and ``torch.compile`` wrappers (in either order), or the model itself."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)
