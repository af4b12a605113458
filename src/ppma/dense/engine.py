"""Training plumbing shared by the detection and segmentation loops.

AdamW parameter groups without weight decay on norms, biases and the decay parameters, atomic,
resumable checkpoints and the JSON-lines log. Processes and devices (torchrun/DDP, autocast,
seeding) live in ``ppma.distributed``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import atomic_save, read_checkpoint
from ..distributed import DistInfo, autocast, unwrap  # autocast: re-exported, tests import it from here
from ..train.data import ResumableSampler
from ..train.state import capture_rng, restore_rng

__all__ = [
    "autocast",
    "param_groups",
    "save_state",
    "load_state",
    "resume_path",
    "resumable_loader",
    "read_run_info",
    "log_line",
]


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


def save_state(
    path: str | os.PathLike,
    info: DistInfo,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    config: Any,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint atomically: weights (``model``), optimizer, scheduler, progress, config,
    and every rank's random states (restored by ``load_state``).

    A collective: every rank calls it at the same step (the random states are gathered); rank 0 writes.
    ``config`` (a dataclass) and ``meta`` (class names, ...) are stored as JSON text, so the file
    loads with ``weights_only=True`` and ``eval``/``predict`` can rebuild the model from it alone.
    """
    rng = info.all_gather(capture_rng())
    if not info.is_main:
        return
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "config": json.dumps(asdict(config), default=str),  # text: loadable with weights_only=True
        "meta": json.dumps(meta or {}),
        "rng": rng,
    }
    atomic_save(state, path)


def resume_path(resume: str, out: Path) -> Path | None:
    """The checkpoint a run resumes from: ``out/last.pth`` for ``"auto"`` when it exists, ``resume`` itself
    (which must exist), or None (a fresh run)."""
    if resume == "auto":
        path = out / "last.pth"
        return path if path.is_file() else None
    if resume and not Path(resume).is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {resume}")
    return Path(resume) if resume else None


def resumable_loader(
    dataset: Dataset, batch_size: int, info: DistInfo, seed: int, workers: int, collate_fn: Any, drop_last: bool
) -> tuple[ResumableSampler, DataLoader]:
    """The training loader of a dense run, and its sampler (``set_epoch(epoch, skip)``).

    Shuffled by (seed, epoch), augmentation seeded per item (the dataset's ``seed``), a private generator
    for the worker seeds: a run resumed mid-epoch sees the same batches and draws the same random numbers
    as one never stopped.
    """
    dataset.seed = seed
    sampler = ResumableSampler(dataset, info.world_size, info.rank, seed)
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        drop_last=drop_last, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return sampler, loader


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Give torch's random states (CPU, and ``device`` if CUDA) back after the block: an evaluation inside
    a training run then leaves the run's random numbers as they were, so resuming is exact either way."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def load_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore what ``save_state`` wrote, with ``rank``'s random states; returns its ``progress`` dict
    (empty for a weights-only file)."""
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
    rng = state.get("rng")
    if isinstance(rng, list):  # a run resumed on more processes than wrote it: the new ranks take rank 0's
        restore_rng(rng[rank] if rank < len(rng) else rng[0])
    elif isinstance(rng, torch.Tensor):  # files written before per-rank states: torch's only
        torch.set_rng_state(rng)
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
