"""The mutable state of a classification run: weights, EMA, optimizer, scheduler, scaler, position (epoch,
step, step within the epoch), best score, history and the running sums of the unfinished epoch.

Checkpoints are written in the one format of ``ppma.runtime.run_folder`` (task ``classify``); the
weights sit under ``model`` and ``model_ema``, as in the published files, so ``ppma convert``,
``ppma eval`` and ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..runtime import read_training_checkpoint, restore_training, training_checkpoint

__all__ = ["RunState", "new_epoch_stats"]


def new_epoch_stats() -> dict[str, Any]:
    """Zeroed running sums of an epoch."""
    # seen: positions of the epoch's shuffled order consumed by all processes together: the resume point,
    # whatever the batch size and process count were (``ResumableSampler``'s skip)
    return {"loss_sum": 0.0, "images": 0, "time": 0.0, "skipped": [], "skipped_steps": 0, "unused_images": 0,
            "seen": 0}


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

    def checkpoint(self, meta: dict[str, Any], rng: list[dict[str, Any]],
                   epoch_stats: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """The checkpoint dict; ``meta`` holds model name, classes, config and the resolved values, ``rng``
        one entry per rank, ``epoch_stats`` the epoch's sums over all ranks (default: this process's)."""
        progress = dict(epoch=self.epoch, step=self.step, step_in_epoch=self.step_in_epoch)
        return training_checkpoint(
            task="classify", **meta, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, ema=self.ema.module if self.ema is not None else None, progress=progress, rng=rng,
            best_top1=self.best_top1, best_epoch=self.best_epoch, history=self.history,
            epoch_stats=self.epoch_stats if epoch_stats is None else epoch_stats,
        )  # fmt: skip

    def load(self, path: str | Path, expect: dict[str, Any], contents: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore from ``path``; returns the checkpoint dict (its ``rng`` list is for the caller to apply).

        ``expect`` holds (at least) ``model_name`` and ``num_classes`` of this run: a checkpoint of another
        model or class count raises a one-line ``PPMAError``. ``contents``: the dict already read from ``path``
        (``read_training_checkpoint``); ``path`` then only names it in messages.
        """
        ckpt = read_training_checkpoint(path) if contents is None else contents
        expect = {"task": "classify", "model_name": expect["model_name"], "num_classes": expect["num_classes"]}
        # The schedule and optimizer settings are this run's, not the saved ones: timm's scheduler and torch's
        # optimizer load their settings with their state, so a resume with another --epochs, --lr, --min-lr,
        # --weight-decay would run the saved schedule (lr stuck at min_lr past the old end). The scheduler is a
        # function of the step (the caller steps it to ``self.step``); the optimizer keeps its moments.
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        progress = restore_training(ckpt, path, expect, self.model, self.optimizer, None,
                                    self.ema.module if self.ema is not None else None, self.scaler)  # fmt: skip
        for group, own in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(own)
        self.epoch, self.step, self.step_in_epoch = progress["epoch"], progress["step"], progress["step_in_epoch"]
        self.best_top1, self.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        self.epoch_stats = {**new_epoch_stats(), **ckpt["epoch_stats"]}  # files of earlier versions lack counters
        if "seen" not in ckpt["epoch_stats"]:  # an earlier file: it counted per process ("samples"), or nothing
            per_process = ckpt["epoch_stats"].get("samples")  # (and before that, steps of its own batch size)
            if per_process is None:
                per_process = self.step_in_epoch * (ckpt.get("config") or {}).get("batch_size", 0)
            self.epoch_stats["seen"] = per_process * (ckpt.get("resolved") or {}).get("world_size", 1)
            self.epoch_stats.pop("samples", None)
        return ckpt
