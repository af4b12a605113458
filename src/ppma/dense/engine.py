"""What detection and segmentation training share, written once: the set-up of a run (folder, seeds,
optimizer with the dense weight-decay policy, schedule, loader, resume, DDP, start line), the
optimizer step, the checkpoint and the log. The pieces are ``ppma.runtime``'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..errors import PPMAError
from ..runtime import (
    DistInfo,
    ResumableSampler,
    RunFolder,
    RunLog,
    all_rng_states,
    amp_dtype_for,
    autocast,  # re-exported: tests import it from here
    changed_settings,
    param_groups,
    plain,
    progress_bar,
    read_training_checkpoint,
    restore_rank_rng,
    restore_training,
    resumable_loader,
    resume_checkpoint,
    seed_everything,
    training_checkpoint,
    unwrap,
)

__all__ = ["DenseRun", "autocast", "initial_weights", "load_weights", "open_run_folder", "read_run_info", "seed_run",
           "show_progress", "start_run"]


@dataclass
class DenseRun:
    """A detection or segmentation run after its set-up (``start_run``)."""

    config: Any  # DetectConfig / SegmentConfig
    info: DistInfo
    folder: RunFolder
    log: RunLog
    model: nn.Module  # as trained: DDP-wrapped under several processes
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: ResumableSampler
    loader: DataLoader
    meta: dict[str, Any]  # task, model_name, classes (+ task extras): stored in every checkpoint
    progress: dict[str, Any]  # the resumed checkpoint's; {} for a fresh run

    def bar(self, iterable: Any, total: int, desc: str, initial: int = 0) -> Any:
        """The run's progress bar (``ppma.runtime.progress_bar``; ``show_progress`` says when it shows)."""
        return progress_bar(iterable, total, desc, show_progress(self.config), self.info.rank, initial)

    def step(self, loss: torch.Tensor, iteration: int) -> None:
        """One update: a finite ``loss`` is back-propagated, clipped (``config.clip_grad`` > 0), applied."""
        if not math.isfinite(loss.item()):
            raise PPMAError(f"{self.meta['task']}: loss is {loss.item()} at iteration {iteration} "
                            f"(lower --lr, or check the data)")  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if getattr(self.config, "clip_grad", 0) > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        self.scheduler.step()

    def stop_if_signalled(self, progress: dict[str, Any]) -> None:
        """After SIGTERM / SIGINT (any rank): save ``progress`` and raise ``RunStopped``. A collective."""
        signum = self.folder.stop_requested()
        if signum:
            self.save(progress)
            raise self.folder.stopped(signum, f"iteration {progress['iteration']}")

    def save(self, progress: dict[str, Any]) -> None:
        """``last.pth``; a collective (every rank's random states are gathered), rank 0 writes."""
        rng = all_rng_states(self.info)
        if self.info.is_main:
            self.folder.save(training_checkpoint(**self.meta, config=self.config, model=self.model,
                                                 optimizer=self.optimizer, scheduler=self.scheduler,
                                                 progress=progress, rng=rng))  # fmt: skip


# Options that do not change what a dense run computes: a resumed run may change them without a word.
_NOT_RESULTS = ("output", "resume", "stop_after", "quiet", "progress", "workers", "save_every")


def show_progress(config: Any) -> bool | None:
    """``config.progress``; not given: no bar under ``quiet``, else only on a terminal (None)."""
    if config.progress is not None:
        return config.progress
    return False if config.quiet else None


def start_run(
    config: Any,
    info: DistInfo,
    meta: dict[str, Any],
    model: nn.Module,
    train_set: Dataset,
    collate_fn: Any,
    drop_last: bool,
    make_scheduler: Callable[[torch.optim.Optimizer, int], Any],
    opened: tuple[RunFolder, Any] | None = None,
) -> DenseRun:
    """Optimizer (AdamW, layer-scale gammas not decayed, as the published dense recipes), loader,
    schedule (``make_scheduler(optimizer, iterations per epoch)``), resumed state and random states, DDP,
    ``config.json``. ``model`` is on ``info.device``; ``meta`` holds ``task``, ``model_name``, ``classes``.
    The caller closes ``run.folder`` when the run ends (lock and signal handlers). ``opened``: the
    ``open_run_folder`` result, where the caller locked the folder before writing into it."""
    amp_dtype_for("bf16" if config.amp else "none", info.device)  # refuses bf16 on a CPU without bf16 units
    folder, resume = opened if opened is not None else open_run_folder(config, info)
    try:
        return _build_run(config, info, meta, model, train_set, collate_fn, drop_last, make_scheduler, folder, resume)
    except BaseException:
        folder.close(failed=True)
        raise


def open_run_folder(config: Any, info: DistInfo) -> tuple[RunFolder, Any]:
    """(the locked ``RunFolder`` of ``config.output``, the checkpoint to resume or None): taken before
    anything is written into the folder (the built-in data sets are), so that a second run is refused
    before it touches the first one's files."""
    resume = resume_checkpoint(config.resume, config.output)
    return RunFolder(config.output, info).open(resuming=resume is not None), resume


def _build_run(config: Any, info: DistInfo, meta: dict[str, Any], model: nn.Module, train_set: Dataset,
               collate_fn: Any, drop_last: bool, make_scheduler: Callable, folder: RunFolder, resume: Any) -> DenseRun:
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay, decay_layer_scale=False), lr=config.lr)
    sampler, loader = resumable_loader(train_set, config.batch_size, info, config.seed, config.workers, collate_fn,
                                       drop_last)  # fmt: skip
    if len(loader) == 0:
        raise ValueError(
            f"batch_size: {config.batch_size} per process is more than the {len(train_set)} training images allow"
        )
    scheduler = make_scheduler(optimizer, len(loader))
    log = RunLog(folder.path, info.is_main, quiet=config.quiet)
    progress: dict[str, Any] = {}
    if resume is not None:
        ckpt = read_training_checkpoint(resume)
        expect = {"task": meta["task"], "model_name": meta["model_name"], "classes": meta["classes"]}
        progress = restore_training(ckpt, resume, expect, model, optimizer, scheduler)
        restore_rank_rng(ckpt["rng"], info, config.seed)
        if "step_in_epoch" in progress and "seen" not in progress:  # a file of an earlier version: its settings
            progress["seen"] = progress["step_in_epoch"] * ckpt["config"]["batch_size"] * len(ckpt["rng"])
        log.print(f"resumed from {resume} at " + ", ".join(f"{k} {v}" for k, v in progress.items()
                                                            if k in ("epoch", "iteration")))  # fmt: skip
        changes = changed_settings(ckpt.get("config"), config, _NOT_RESULTS)
        if changes:  # allowed, but never silently
            log.print(f"resume: settings changed from the saved run: {', '.join(changes)}; "
                      f"the result will differ from an unbroken run")  # fmt: skip
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    folder.write_text("config.json", json.dumps(plain(config), indent=2))
    return DenseRun(config, info, folder, log, model, optimizer, scheduler, sampler, loader, meta, progress)


def resumed_position(progress: dict[str, Any], epoch: int) -> tuple[int, int]:
    """(steps, positions of the epoch's order trained) of ``epoch`` in the resumed ``progress``; (0, 0) for an
    epoch it had not started. ``seen`` counts images over all processes, so it holds under another batch
    size or process count (``ResumableSampler``'s skip)."""
    if progress.get("epoch") != epoch:
        return 0, 0
    return progress.get("step_in_epoch", 0), progress.get("seen", 0)


def seed_run(config: Any, info: DistInfo) -> None:
    """The thread count (``config.threads``; CPU results depend on it in their last bits, which training
    amplifies) and the seeds of a run (a resumed one then restores its saved states in ``start_run``)."""
    if getattr(config, "threads", 0):
        torch.set_num_threads(config.threads)
    seed_everything(config.seed + info.rank)


def locked_set_up(config: Any, info: DistInfo, set_up_in: Callable[[Any, DistInfo, tuple[Any, Any]], Any]) -> Any:
    """Lock the run folder, seed the run, then ``set_up_in(config, info, opened)``: the set-up of detection and
    segmentation. The folder is locked before the built-in data is written into it, and released if the
    set-up fails."""
    opened = open_run_folder(config, info)
    try:
        seed_run(config, info)
        return set_up_in(config, info, opened)
    except BaseException:
        opened[0].close(failed=True)
        raise


def read_run_info(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (config, meta) dicts of a dense training checkpoint; meta: ``task``, ``class_names`` and the
    task's extras (``category_ids``).

    Raises:
        ValueError: the file was not written by a dense training run.
    """
    try:
        ckpt = read_training_checkpoint(path)
    except PPMAError:
        ckpt = {}
    if ckpt.get("task") not in ("detect", "segment"):
        raise ValueError(
            f"checkpoint {path}: not a dense-task training checkpoint (no config/meta); "
            f"backbone-only files go to --pretrained"
        )
    meta = {"task": ckpt["task"], "class_names": ckpt["classes"]}
    meta.update({k: ckpt[k] for k in ("category_ids",) if k in ckpt})
    return ckpt["config"], meta


@contextlib.contextmanager
def initial_weights(config: dict[str, Any]) -> Iterator[None]:
    """Build a model inside this block for the weights the run of ``config`` started from: torch's generator
    seeded as ``seed_run`` seeds rank 0 (nothing draws from it before the model is built), then given back.
    ``--untrained`` used the caller's generator state: another baseline score on every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.get("seed", 0))
        yield


def load_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """The weights of a dense training checkpoint into ``model`` (strict)."""
    ckpt = read_training_checkpoint(path)
    missing, unexpected = unwrap(model).load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            f" (was it written for another backbone or class count?)"
        )
