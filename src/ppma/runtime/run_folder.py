"""The run folder and its checkpoints: one format and one resume convention for ``ppma train``,
``ppma detect train`` and ``ppma segment train``.

A training checkpoint (``last.pth``) is a dict of tensors and plain Python values (it loads with
``torch.load(weights_only=True)`` through ``ppma.checkpoint.read_checkpoint``), written atomically
by rank 0::

    format      2
    task        "classify" | "detect" | "segment"
    model_name  the timm model (classification) or backbone (dense) name
    classes     class names, in label order
    config      the run's config dataclass as plain types
    model, model_ema (if any), optimizer, scheduler, scaler (if any)
    progress    where the run stands (the task's counters: epoch, step, iteration, ...)
    rng         every rank's random states (``ppma.runtime.rng``), restored on resume
    ...         task extras (``num_classes``, ``history``, ``category_ids``, ...)

``--resume`` means the same everywhere (``resume_checkpoint``): alone (``""``) the output folder's
``last.pth``, a run folder its ``last.pth``, a file itself; ``auto`` the output folder's ``last.pth``
if there is one, else a fresh start (for jobs that a cluster restarts with the same command line).

``RunFolder`` is what every run does to its folder, once for all three commands: it creates it, holds
an exclusive lock on it while the run lives (``.lock``, removed at the end; a second run on the same
folder is refused; a lock file left by a crashed run is reported and taken over), removes the
temporary files of checkpoint writes that a kill interrupted, writes checkpoints atomically, and
turns SIGTERM / SIGINT into a stop at the next step boundary (``stop_requested``), where the loop
saves ``last.pth`` and raises ``RunStopped``.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_save, atomic_write_text, read_checkpoint
from ..errors import PPMAError, one_line
from .distributed import DistInfo, unwrap

__all__ = [
    "FORMAT_VERSION",
    "RunFolder",
    "RunStopped",
    "changed_settings",
    "plain",
    "read_training_checkpoint",
    "restore_training",
    "resume_checkpoint",
    "training_checkpoint",
]

FORMAT_VERSION = 2


class RunStopped(PPMAError):
    """A run stopped by SIGTERM / SIGINT after saving a resumable ``last.pth``; ``signum`` is the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def plain(config: Any) -> dict[str, Any]:
    """A config dataclass (or dict) as JSON-able plain types (tuples become lists)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(values, default=str))


def changed_settings(saved: dict[str, Any] | None, config: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"name saved -> now"`` for each option of ``config`` (a dataclass or dict) whose value differs from
    the ``saved`` run's config (as stored in its checkpoint), except those in ``ignore`` (options that
    do not change the result: output folder, logging, loader processes, ...)."""
    now = plain(config)
    saved = saved or {}
    return [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items() if k not in ignore and k in saved and saved[k] != v]


def resume_checkpoint(resume: str | None, output_dir: str | os.PathLike | None) -> Path | None:
    """The file a run resumes from (see the module docstring), or None for a fresh run.

    Raises:
        FileNotFoundError: (one line) ``resume`` names nothing that exists.
    """
    if resume is None:
        return None
    if resume in ("", "auto"):
        if output_dir is None:
            raise FileNotFoundError("resume: nothing to resume: give a checkpoint or run folder, or --output-dir")
        path = Path(output_dir) / "last.pth"
        if resume == "auto" and not path.is_file():
            return None
    else:
        path = Path(resume)
        path = path / "last.pth" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"resume: nothing to resume at {path}")
    return path


def training_checkpoint(
    *,
    task: str,
    model_name: str,
    classes: list[str],
    config: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    rng: list[dict[str, Any]],
    ema: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The checkpoint dict of the module docstring (``model`` may be wrapped in DDP / ``torch.compile``)."""
    out = {"format": FORMAT_VERSION, "task": task, "model_name": model_name, "classes": list(classes),
           "config": plain(config), **extra, "model": unwrap(model).state_dict(),
           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
           "progress": dict(progress), "rng": rng}  # fmt: skip
    if ema is not None:
        out["model_ema"] = ema.state_dict()
    if scaler is not None:
        out["scaler"] = scaler.state_dict()
    return out


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint in the layout of the module docstring; files of earlier versions (``ppma train``
    format 1, dense files with JSON-text config) are converted on reading.

    Raises:
        PPMAError: (one line) the file holds weights only, not a training run.
    """
    ckpt = read_checkpoint(path)
    if ckpt.get("format") == 1 and "optimizer" in ckpt:  # ppma train before the shared runtime
        ckpt = {**ckpt, "task": "classify", "progress": {k: ckpt[k] for k in ("epoch", "step", "step_in_epoch")}}
    elif isinstance(ckpt.get("config"), str) and isinstance(ckpt.get("meta"), str):  # dense, before it
        meta = json.loads(ckpt["meta"])
        config = json.loads(ckpt["config"])
        ckpt = {**ckpt, "format": FORMAT_VERSION, "task": meta.get("task"), "config": config,
                "model_name": config.get("backbone"), "classes": meta.get("class_names", []),
                **{k: v for k, v in meta.items() if k not in ("task", "class_names")}}  # fmt: skip
    if ckpt.get("format") != FORMAT_VERSION or not isinstance(ckpt.get("progress"), dict):
        raise PPMAError(f"checkpoint: {path} is not a training checkpoint of ppma (weights only?)")
    return ckpt


def restore_training(
    ckpt: dict[str, Any],
    path: str | os.PathLike,
    expect: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """Load a checkpoint's weights, EMA, optimizer, scheduler and scaler (those given); returns its progress.

    ``expect`` holds values this run has (``task``, ``model_name``, ``num_classes``, ...): a checkpoint
    with other values raises a one-line ``PPMAError``, as does one whose weights do not fit. The random
    states are the caller's to restore (``restore_rank_rng``), after everything that draws at set-up.
    """
    for key, value in expect.items():
        if ckpt.get(key) != value:
            raise PPMAError(f"resume: {path} has {key} {ckpt.get(key)!r}, this run has {value!r}")
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        if ema is not None:
            if "model_ema" not in ckpt:
                raise PPMAError(f"resume: {path} has no EMA weights but this run keeps an EMA (--no-ema?)")
            ema.load_state_dict(ckpt["model_ema"])
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError) as e:  # shapes or keys differ: another architecture
        # torch's first line only names the model class; the keys follow on the next lines
        raise PPMAError(f"resume: {path} does not fit this model: {one_line(str(e))[:300]}") from e
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    return dict(ckpt["progress"])


class RunFolder:
    """The output folder of a training run, seen from one rank (rank 0 writes, every rank may read).

    Use as ``folder = RunFolder(path, info).open(resuming)`` ... ``folder.close()`` (``close`` releases
    the lock and the signal handlers; it is safe to call twice).

    Args:
        path: the folder.
        info: this process's place in the run.
    """

    def __init__(self, path: str | os.PathLike, info: DistInfo) -> None:
        self.path = Path(path)
        self.info = info
        self._lock: Any = None
        self._signal: int | None = None  # the signal received, until the loop acts on it
        self._handlers: dict[int, Any] = {}
        self._created = False  # made by this run: removed again if its set-up fails before writing into it

    @property
    def last(self) -> Path:
        """The resumable checkpoint, ``last.pth``."""
        return self.path / "last.pth"

    def open(self, resuming: bool) -> RunFolder:
        """Create and lock the folder (rank 0), remove stale temporary files, catch SIGTERM / SIGINT.

        Raises:
            PPMAError: another live run holds the folder, or a fresh run finds one there (``last.pth``).
        """
        if self.info.is_main:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        if not resuming and self.last.exists():
            self.close()
            raise PPMAError(
                f"output: {self.path} already holds a run (last.pth); --resume it or pick another output folder"
            )
        if self.info.is_main:
            stale = list(self.path.glob(".*.pth.*.tmp"))  # atomic_save's temporaries, left by a killed write
            for tmp in stale:
                tmp.unlink(missing_ok=True)
            if stale:
                print(f"{self.path}: removed {len(stale)} temporary file(s) of interrupted checkpoint writes")
        self._catch_signals()
        return self

    def _take_lock(self) -> None:
        path = self.path / ".lock"
        while True:
            lock = open(path, "a+")  # noqa: SIM115  (held open for the run's life)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the OS drops it when the process dies
            except OSError:
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                lock.close()
                raise PPMAError(f"output: {self.path} is in use by another run (pid {holder}); "
                                f"wait for it or pick another output folder") from None  # fmt: skip
            try:
                if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            lock.close()  # a run that ended removed this file while we opened it: lock the new one
        lock.seek(0)
        previous = lock.read().strip()
        if previous:  # the lock file outlived its run: that run was killed or crashed
            print(f"{self.path}: a previous run (pid {previous}) ended without releasing its lock; taken over")
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def _catch_signals(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return

        def handler(signum: int, _frame: Any) -> None:
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._handlers[sig] = signal.signal(sig, handler)

    def stop_requested(self) -> int | None:
        """The signal (SIGTERM / SIGINT) any rank received since ``open``, or None. A collective under
        several processes (the ranks agree, so that they save and stop at the same step)."""
        received = self._signal or 0
        if self.info.distributed and self.info.all_reduce_sum([float(received > 0)])[0] > 0:
            received = received or signal.SIGTERM  # another rank was signalled: stop with it
        return received or None

    def stopped(self, signum: int, where: str) -> RunStopped:
        """The exception to raise once ``last.pth`` is saved after ``signum``; ``where`` says at which step."""
        name = signal.Signals(signum).name
        return RunStopped(f"stopped by {name} at {where}; {self.last} holds the run: continue with --resume",
                          signum)  # fmt: skip

    def close(self, failed: bool = False) -> None:
        """Give back the signal handlers and the lock. ``failed``: the set-up failed, so a folder this run
        made and left empty is removed (a bad option found while building the model left an empty run folder)."""
        for sig, previous in self._handlers.items():
            signal.signal(sig, previous)
        self._handlers = {}
        if self._lock is not None:
            (self.path / ".lock").unlink(missing_ok=True)  # no lock file: released cleanly
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if failed and self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def save(self, checkpoint: dict[str, Any], name: str = "last.pth") -> None:
        """Write ``checkpoint`` atomically as ``name`` (rank 0 only; other ranks return at once)."""
        if self.info.is_main:
            try:
                atomic_save(checkpoint, self.path / name)
            except OSError as e:  # a full disk, a quota, a folder gone: atomic_save left the old file alone
                why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)
                kept = f"the previous {name} is intact" if (self.path / name).exists() else f"no {name} written"
                raise PPMAError(f"checkpoint: cannot write {self.path / name} ({why}); {kept}") from e

    def write_text(self, name: str, text: str) -> None:
        """A small file beside the checkpoints (rank 0): the effective config, written atomically."""
        if self.info.is_main:
            atomic_write_text(self.path / name, text)
