"""Everything a run needs to continue exactly where it stopped: weights, EMA, optimizer, scheduler,
scaler, position (epoch, step, step within the epoch), history and the RNG states of every process.

Checkpoints are plain dicts of tensors and Python scalars (readable with ``torch.load(weights_only=True)``
through ``ppma.checkpoint.read_checkpoint``), written atomically with ``ppma.checkpoint.atomic_save``.
The weights sit under ``model`` and ``model_ema``, as in the published files, so ``ppma convert``,
``ppma eval`` and ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` read them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import atomic_save, read_checkpoint
from ..errors import PPMAError

__all__ = ["FORMAT_VERSION", "RunState", "capture_rng", "find_resume_checkpoint", "new_epoch_stats", "restore_rng"]

FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as tensors and ints."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # ("MT19937", (624,) uint32, int, int, float)
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                   "gauss": float(gauss)}  # fmt: skip
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state,
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain types
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume_checkpoint(resume: str, output_dir: str | None) -> Path:
    """The file to resume from: ``resume`` itself, its ``last.pth`` if it is a folder, or the output folder's
    ``last.pth`` when ``resume`` is empty. Raises a one-line ``FileNotFoundError`` when there is nothing."""
    if not resume:
        if output_dir is None:
            raise FileNotFoundError("resume: nothing to resume: give a checkpoint or run folder, or --output-dir")
        resume = output_dir
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise FileNotFoundError(f"resume: nothing to resume at {path}")
    return path


def new_epoch_stats() -> dict[str, Any]:
    """Zeroed running sums of an epoch."""
    return {"loss_sum": 0.0, "images": 0, "time": 0.0, "skipped": []}


@dataclass
class RunState:
    """The mutable state of a training run (the model is the unwrapped module, not the DDP wrapper)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler
    scaler: torch.amp.GradScaler
    ema: nn.Module | None = None  # timm ModelEmaV3
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer updates completed in total
    step_in_epoch: int = 0  # updates completed in the current (unfinished) epoch
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # running sums of the current epoch (loss_sum, images, time, skipped paths), so a resumed epoch reports whole
    epoch_stats: dict[str, Any] = field(default_factory=lambda: new_epoch_stats())

    def state_dict(self, meta: dict[str, Any], rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint dict; ``meta`` holds model name, classes and config, ``rng`` one entry per rank."""
        out = {
            "format": FORMAT_VERSION,
            **meta,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "step_in_epoch": self.step_in_epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "epoch_stats": self.epoch_stats,
            "rng": rng,
        }
        if self.ema is not None:
            out["model_ema"] = self.ema.module.state_dict()
        return out

    def save(self, path: str | Path, meta: dict[str, Any], rng: list[dict[str, Any]]) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        atomic_save(self.state_dict(meta, rng), path)

    def load(self, path: str | Path, expect: dict[str, Any]) -> dict[str, Any]:
        """Restore from ``path``; returns the checkpoint dict (its ``rng`` list is for the caller to apply).

        ``expect`` holds ``model_name`` and ``num_classes`` of this run: a checkpoint of another model or
        class count raises a one-line ``PPMAError``.
        """
        ckpt = read_checkpoint(path)
        if ckpt.get("format") != FORMAT_VERSION or "optimizer" not in ckpt:
            raise PPMAError(f"resume: {path} is not a training checkpoint of ppma train (weights only?)")
        for key in ("model_name", "num_classes"):
            if ckpt.get(key) != expect[key]:
                raise PPMAError(f"resume: {path} has {key} {ckpt.get(key)!r}, this run has {expect[key]!r}")
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None:
                if "model_ema" not in ckpt:
                    raise PPMAError(f"resume: {path} has no EMA weights but this run keeps an EMA (--no-ema?)")
                self.ema.module.load_state_dict(ckpt["model_ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError) as e:  # shapes or keys differ: another architecture
            raise PPMAError(f"resume: {path} does not fit this model: {str(e).splitlines()[0]}") from e
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.step_in_epoch = ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]
        self.best_top1, self.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        self.epoch_stats = dict(ckpt["epoch_stats"])
        return ckpt
