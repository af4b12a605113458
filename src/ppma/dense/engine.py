"""Training plumbing shared by the detection and segmentation loops.

torchrun/DDP (NCCL on CUDA, gloo on CPU), bf16 autocast, AdamW parameter groups without weight
decay on norms, biases and the decay parameters, and atomic, resumable checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoint import atomic_save, read_checkpoint

__all__ = [
    "DistInfo",
    "setup_distributed",
    "cleanup_distributed",
    "autocast",
    "param_groups",
    "save_state",
    "load_state",
    "main_process_first",
    "read_run_info",
    "seed_everything",
    "unwrap",
    "log_line",
    "pick_device",
]


@dataclass
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available here")
    return torch.device(device)


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Without those variables this is a single-process run. CUDA runs use NCCL and one GPU per
    local rank; CPU runs use gloo.
    """
    dev = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled`` (CPU and CUDA); a no-op otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. writes the built-in data set), the other ranks after it."""
    if info.distributed and not info.is_main:
        dist.barrier()
    yield
    if info.distributed and info.is_main:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on 1-D parameters (norms, biases, layer scale) and the PPMA decay parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("dt_bias", "A_log", ".gamma")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    config: Any,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint atomically: weights (``model``), optimizer, scheduler, progress, config.

    ``config`` (a dataclass) and ``meta`` (class names, ...) are stored as JSON text, so the file
    loads with ``weights_only=True`` and ``eval``/``predict`` can rebuild the model from it alone.
    """
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "config": json.dumps(asdict(config), default=str),  # text: loadable with weights_only=True
        "meta": json.dumps(meta or {}),
        "rng": torch.get_rng_state(),
    }
    atomic_save(state, path)


def load_state(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
) -> dict[str, Any]:
    """Restore what ``save_state`` wrote; returns its ``progress`` dict (empty for a weights-only file)."""
    state = read_checkpoint(path)
    weights = state.get("model", state)
    missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            f" (was it written for another backbone or class count?)"
        )
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    return dict(state.get("progress", {}))


def read_run_info(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (config, meta) dicts stored in a checkpoint by ``save_state``.

    Raises:
        ValueError: the file was not written by a dense training run.
    """
    state = read_checkpoint(path)
    if not isinstance(state.get("config"), str) or not isinstance(state.get("meta"), str):
        raise ValueError(
            f"checkpoint {path}: not a dense-task training checkpoint (no config/meta); "
            f"backbone-only files go to --pretrained"
        )
    return json.loads(state["config"]), json.loads(state["meta"])


def log_line(out_dir: Path | None, record: dict[str, Any], quiet: bool = False, show: tuple[str, ...] = ()) -> None:
    """Append a record as a JSON line to ``out_dir/log.jsonl`` and print it (only the ``show`` keys if given)."""
    if not quiet:
        shown = {k: v for k, v in record.items() if not show or k in show}
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()), flush=True)
    if out_dir is not None:
        with open(out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
