"""The training and evaluation loops, and ``run(config)`` that wires them to timm's parts.

``run`` builds, from a ``TrainConfig``: the datasets and loaders (``data.py``), the model
(``timm.create_model``), AdamW on the parameter groups of ``ppma.runtime.param_groups``, timm's cosine
schedule with warm-up stepped every update, timm Mixup/CutMix and its soft-target or label-smoothing
loss, timm ``ModelEmaV3``, autocast (bf16/fp16 with a grad scaler), optional clipping and
``torch.compile``, and DDP under ``torchrun``.
Then it loops: ``train_one_epoch`` -> ``evaluate`` (model and EMA) -> checkpoints -> log; the run folder,
checkpoint format, random states, samplers and log writer are ``ppma.runtime``'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import model_card
from ..errors import PPMAError, one_line
from ..runtime import (
    DistInfo,
    ResumableSampler,
    RunFolder,
    RunLog,
    ShardSampler,
    all_rng_states,
    amp_dtype_for,
    autocast,
    changed_settings,
    cleanup_distributed,
    param_groups,
    pick_device,
    read_training_checkpoint,
    restore_rank_rng,
    resume_checkpoint,
    seed_everything,
    setup_distributed,
    unwrap,
)
from .config import TrainConfig
from .data import (build_datasets, build_eval_dataset, build_transform, default_workers, describe_data,
                   describe_folders, describe_skipped, make_loader)
from .report import plot_curves, progress_bar
from .state import RunState, new_epoch_stats

__all__ = [
    "build_model",
    "build_optimizer",
    "evaluate",
    "evaluate_checkpoint",
    "min_train_batch",
    "predict_images",
    "Predictions",
    "resolve_lr",
    "resumed_options",
    "run",
    "train_one_epoch",
]  # fmt: skip


# ---- building blocks --------------------------------------------------------------------------------------


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """``timm.create_model(config.model, num_classes, drop_path_rate, **model_kwargs)`` + initial weights."""
    if not timm.is_model(config.model):
        raise ValueError(f"model: unknown name {config.model!r}; PPMA models: {', '.join(timm.list_models('ppma_*'))}")
    kwargs = dict(config.model_kwargs)
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    try:
        model = timm.create_model(config.model, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an argument the model does not take, or of the wrong kind: the user's model_kwargs
        raise ValueError(f"model_kwargs: {config.model} cannot be built with {config.model_kwargs}: {e}") from e
    if config.initial_checkpoint:
        from ..checkpoint import load_into

        try:
            load_into(model, config.initial_checkpoint)
        except ValueError as e:
            raise PPMAError(one_line(str(e))) from e
    return model


def resolve_lr(config: TrainConfig, total_batch: int) -> float:
    """``config.lr``, or the linear scaling rule ``lr_base * total_batch / lr_base_size`` (5e-4 per 512 images)."""
    return config.lr if config.lr is not None else config.lr_base * total_batch / config.lr_base_size


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer ``config.opt`` on the parameter groups of ``ppma.runtime.param_groups`` with the
    layer-scale gammas decayed, as the published classification recipe (timm's own grouping) does."""
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, config.weight_decay, decay_layer_scale=True)
    return create_optimizer_v2(groups, opt=config.opt, lr=lr, weight_decay=config.weight_decay, eps=config.opt_eps)


def _build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, updates_per_epoch: int) -> Any:
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        step_on_epochs=False,  # every update, as the published recipe (smooth warm-up)
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def _build_loss(config: TrainConfig, num_classes: int) -> tuple[Any, nn.Module]:
    """(timm Mixup or None, training loss): soft targets under mixup, label smoothing otherwise."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                      switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing,
                      num_classes=num_classes)  # fmt: skip
        return mixup, SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(config.smoothing)
    return None, nn.CrossEntropyLoss()


def min_train_batch(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """The fewest images per step ``model`` can train on at ``input_size``: 2 when one of its BatchNorm
    layers sees a single value per channel and image (a 1x1 map, or a vector: PPMA's head at 32 px),
    which training-mode BatchNorm cannot normalise alone; else 1.

    Found with one evaluation-mode forward of a blank image (no statistics move, no random number is
    drawn), hooks recording what each BatchNorm layer receives.
    """
    singles: list[bool] = []

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        singles.append(x.numel() // max(x.shape[0] * x.shape[1], 1) == 1)

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 1
    hooks = [m.register_forward_pre_hook(record) for m in norms]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return 2 if any(singles) else 1


# ---- the loops --------------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    state: RunState,
    loss_fn: nn.Module,
    mixup: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    clip_grad: float | None = None,
    on_step: Callable[[], bool] | None = None,
    progress: Any = None,
    dist_info: DistInfo | None = None,
    min_images: int = 1,
) -> bool:
    """Train over ``loader`` (the rest of the epoch when resumed), updating ``state`` and its ``epoch_stats``.

    Each batch: mixup -> autocast forward -> (scaled) backward -> optional clip -> optimizer step -> EMA
    update -> scheduler step. ``on_step`` runs after every update and returns True to stop (a checkpoint
    or a simulated kill). Returns True when stopped early.

    A batch left with fewer usable images than ``min_images`` (unreadable images removed; mixup drops an
    odd last image), ``min_images`` being what the model can train on (``min_train_batch``: 2 when a
    BatchNorm layer would see one value per channel), is skipped: no update, the schedule moves on, and
    ``epoch_stats`` counts the skipped step and its unused readable images. With several processes the
    ranks first agree, so that all skip that update together (a rank that skipped alone would leave the
    others waiting in DDP's gradient all-reduce).
    """
    model.train()
    stats = state.epoch_stats
    bar = progress if progress is not None else loader
    unwrapped = unwrap(model)
    start = time.perf_counter() - stats["time"]
    for batch in bar:
        stats["skipped"].extend(batch.skipped)
        usable = len(batch) - (len(batch) % 2 if mixup is not None else 0)  # timm's Mixup pairs images
        if usable < min_images:
            usable = 0
        if dist_info is not None and dist_info.distributed:
            usable = usable if dist_info.all_reduce_sum([float(usable == 0)])[0] == 0 else 0
        stats["unused_images"] = stats.get("unused_images", 0) + len(batch) - usable
        if usable == 0:
            stats["skipped_steps"] = stats.get("skipped_steps", 0) + 1
        if usable > 0:
            images = batch.images[:usable].to(device, non_blocking=True)
            targets = batch.targets[:usable].to(device, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)
            loss = _update(model, images, targets, state, loss_fn, amp_dtype, clip_grad, unwrapped)
            stats["loss_sum"] += loss * len(targets)
            stats["images"] += len(targets)
        state.step += 1
        state.step_in_epoch += 1
        state.scheduler.step_update(num_updates=state.step)
        stats["time"] = time.perf_counter() - start
        if progress is not None:
            progress.set_postfix(loss=f"{stats['loss_sum'] / max(stats['images'], 1):.4f}",
                                 lr=f"{state.optimizer.param_groups[0]['lr']:.2e}",
                                 img_s=f"{stats['images'] / max(stats['time'], 1e-9):.0f}")  # fmt: skip
        if on_step is not None and on_step():
            return True
    return False


def _update(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, state: RunState, loss_fn: nn.Module,
            amp_dtype: torch.dtype | None, clip_grad: float | None, unwrapped: nn.Module) -> float:
    """One optimizer update (autocast forward, scaled backward, optional clip, step, EMA); returns the loss."""
    with autocast(images.device, amp_dtype):
        loss = loss_fn(model(images), targets)
    value = loss.item()
    if not math.isfinite(value):
        raise PPMAError(f"train: loss is {value} at step {state.step + 1}; lower --lr or set --clip-grad")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if clip_grad is not None:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(unwrapped, step=state.step + 1)
    return value


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    dist_info: DistInfo | None = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Top-1, top-5 (%), mean cross-entropy, images and images/s over ``loader``, summed over all processes.

    Each process evaluates its own shard (``ShardSampler``: no padding), so the sums are exact.
    """
    dist_info = dist_info or DistInfo(device=device)
    model.eval()
    loss_sum = correct1 = correct5 = n = 0.0
    skipped: list[str] = []
    start = time.perf_counter()
    for batch in progress_bar(loader, len(loader), "eval", progress, dist_info.rank):
        skipped.extend(batch.skipped)
        if len(batch) == 0:
            continue
        images, targets = batch.images.to(device, non_blocking=True), batch.targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        n += len(targets)
    elapsed = time.perf_counter() - start
    sums = dist_info.all_reduce_sum([loss_sum, correct1, correct5, n, len(skipped)])
    loss_sum, correct1, correct5, n, n_skipped = sums
    elapsed = max(dist_info.all_gather(elapsed))
    if n == 0:
        raise PPMAError("eval: no readable images")
    return {"top1": 100 * correct1 / n, "top5": 100 * correct5 / n, "loss": loss_sum / n, "images": int(n),
            "images_per_s": n / max(elapsed, 1e-9), "skipped": int(n_skipped)}  # fmt: skip


# ---- a whole run: set-up, loop, end of epoch, end ---------------------------------------------------------


def resumed_options(resume: str | None, output_dir: str | None) -> dict[str, Any] | None:
    """The options of the run that ``resume`` names (``ppma.runtime.resume_checkpoint``), without its
    ``resume``, ``stop_after_steps`` and ``output_dir``: a resumed run starts from them; None when nothing is
    resumed. (The run continues in the folder it is resumed from, or ``--output-dir``: never in the folder
    its file names, which may be the original of a moved or copied run.)"""
    path = resume_checkpoint(resume, output_dir)
    if path is None:
        return None
    saved = read_training_checkpoint(path).get("config") or {}
    return {k: v for k, v in saved.items() if k not in ("resume", "stop_after_steps", "output_dir")}


def _finished_resume(config: TrainConfig, path: Path | None, ckpt: dict[str, Any] | None) -> dict[str, Any] | None:
    """``run``'s summary of the saved run (``ckpt``, read from ``path``), with ``already_finished`` the line
    saying so, when ``config`` resumes a run in its own folder that has already trained ``config.epochs`` epochs
    or more: nothing to do, nothing written (it rewrote config.yaml, the log and the curves, and ``ppma train``
    printed "resumed at epoch N+1"). None otherwise; a finished run resumed into another folder is
    ``_set_up``'s error."""
    if path is None:
        return None
    if config.output_dir is not None and Path(config.output_dir).resolve() != path.parent.resolve():
        return None
    progress = ckpt["progress"]
    done = progress["epoch"]
    if done < config.epochs:
        return None
    line = (f"resume: {path} already finished its {done} epochs, nothing to train (nothing written); to train "
            f"more, give a larger --epochs: ppma train --resume {path.parent} --epochs M, M > {done}")  # fmt: skip
    out = Path(config.output_dir) if config.output_dir is not None else path.parent  # as _output_dir names it
    history = list(ckpt.get("history") or [])
    return _summary(history, ckpt.get("best_top1"), ckpt.get("best_epoch", 0), config.ema, ckpt.get("resolved") or {},
                    done, progress["step"], out, stopped=False, already_finished=line)  # fmt: skip


@dataclasses.dataclass
class _Run:
    """What the set-up of a run builds, for its loop and its epoch ends."""

    config: TrainConfig
    d: DistInfo
    folder: RunFolder
    log: RunLog
    state: RunState
    train_model: nn.Module  # the model as trained: DDP / SyncBatchNorm / torch.compile wrapped
    train_sampler: ResumableSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    mixup: Any
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None
    meta: dict[str, Any]
    min_images: int = 1  # per process and step (min_train_batch)
    stopped: bool = False


def _output_dir(config: TrainConfig, resume_path: Path | None, dist_info: DistInfo) -> Path:
    if config.output_dir is not None:
        return Path(config.output_dir)
    if resume_path is not None:
        return resume_path.parent
    stamp = dist_info.all_gather(time.strftime("%Y%m%d-%H%M%S"))[0]  # rank 0's clock for everyone
    return Path("runs") / f"{config.model}-{stamp}"


def run(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` as ``config`` says and return a summary.

    Works in one process or under ``torchrun`` (DDP: each process trains on its shard, metrics are
    summed over processes, only rank 0 writes). Files in the output folder: ``config.yaml`` (the
    effective config), ``last.pth`` (every epoch, and every ``save_every_steps``), ``best.pth`` (best
    top-1: the EMA's when the EMA is on), ``log.jsonl`` (one line per epoch), ``curves.png``.

    A ``config.resume`` of a run (in its own folder) that has already trained ``config.epochs`` epochs
    prints one line (``ppma train: resume: RUN/last.pth already finished its N epochs, ...``, rank 0), writes
    nothing, builds nothing, and returns the saved run's summary: the same keys, from its checkpoint
    (history, best, last epoch; ``params``, ``lr``, ``total_batch`` as that run resolved them), with
    ``already_finished`` that line (None for every run that trains). ``ppma train`` is this call.

    Returns:
        dict with ``best_top1``, ``best_epoch``, ``final_top1``, ``final_top5``, ``final_loss`` (of the
        weights the best checkpoint is chosen by: EMA when on), ``final_top1_model``, ``final_top1_ema``,
        ``train_images_per_s``, ``eval_images_per_s``, ``params``, ``epochs``, ``steps``, ``lr``,
        ``total_batch``, ``output_dir``, ``best_checkpoint``, ``last_checkpoint``, ``stopped``, ``skipped_images``,
        ``history`` (the log lines), ``already_finished``.
    """
    config.validate()
    # The checkpoint to resume is read once here, for the finished-run check and the set-up.
    resume_path = resume_checkpoint(config.resume, config.output_dir)
    saved = read_training_checkpoint(resume_path) if resume_path is not None else None
    finished = _finished_resume(config, resume_path, saved)
    if finished is not None:  # before any process group, folder lock or file
        if os.environ.get("RANK", "0") == "0":  # once under torchrun
            print(f"ppma train: {finished['already_finished']}", flush=True)
        return finished
    dist_info = setup_distributed(config.device)
    r = None
    try:
        r = _set_up(config, dist_info, resume_path, saved)
        del saved  # restored into the model and optimizer: not kept for the whole run
        while r.state.epoch < config.epochs and not r.stopped:
            if _train_epoch(r):
                break
            _end_epoch(r)
        return _finish(r)
    finally:
        if r is not None:
            r.folder.close()
        cleanup_distributed(dist_info)


# Options that do not change what a run computes: a resumed run may change them without a word.
_NOT_RESULTS = ("output_dir", "resume", "stop_after_steps", "progress", "plot", "tensorboard", "save_every_steps",
                "workers")  # fmt: skip  (workers: augmentation is seeded per image, whatever the process)


def _set_up(config: TrainConfig, d: DistInfo, resume_path: Path | None, saved: dict[str, Any] | None) -> _Run:
    """Folder, data, model, optimizer, schedule, EMA, loss; the resumed state (``saved``, read from
    ``resume_path``) and random states (the folder is given back if any of it fails)."""
    out = _output_dir(config, resume_path, d)
    elsewhere = resume_path is not None and out.resolve() != resume_path.parent.resolve()
    if elsewhere:  # continuing a run in a new folder: nothing to continue would leave that folder empty
        done = saved["progress"]["epoch"]
        if done >= config.epochs:
            raise PPMAError(f"resume: {resume_path} has finished its {done} epochs, nothing to train into {out}; "
                            f"give --epochs above {done} to train on")  # fmt: skip
        if (out / "last.pth").exists():  # resuming skips the "holds a run" check: it must not overwrite another
            raise PPMAError(f"output: {out} already holds another run (last.pth); continue {resume_path} in its own "
                            f"folder or an empty one")  # fmt: skip
    folder = RunFolder(out, d).open(resuming=resume_path is not None)
    try:
        if elsewhere and d.is_main:
            _carry_best(resume_path, folder.path)
        return _build_run(config, d, folder, resume_path, saved)
    except BaseException:
        folder.close(failed=True)
        raise


def _carry_best(resume_path: Path, out: Path) -> None:
    """A run resumed into another folder starts there with its ``best.pth`` (copied atomically, with the
    umask's mode like every checkpoint), so that the new folder holds the run's best weights even if no
    later epoch beats them."""
    from ..checkpoint import atomic_copy

    best = resume_path.parent / "best.pth"
    if resume_path.name != "last.pth" or not best.is_file() or (out / "best.pth").exists():
        return
    atomic_copy(best, out / "best.pth")


def _build_run(
    config: TrainConfig, d: DistInfo, folder: RunFolder, resume_path: Path | None, saved: dict[str, Any] | None
) -> _Run:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_set, val_set, classes = build_datasets(config)  # every process reads the folders; samplers shard them
    train_sampler = ResumableSampler(train_set, d.world_size, d.rank, config.seed)
    pin = d.device.type == "cuda"
    # None: the recipe's 8, at most the CPUs (results do not depend on it: augmentation is seeded per image)
    workers = default_workers(8) if config.workers is None else config.workers
    train_loader = make_loader(train_set, train_sampler, config.batch_size, workers, True, pin)
    val_loader = make_loader(val_set, ShardSampler(len(val_set), d.world_size, d.rank), config.batch_size,
                             workers, False, pin)  # fmt: skip
    if len(train_sampler) // config.batch_size == 0:
        raise PPMAError(f"data: {len(train_sampler)} training images per process, fewer than one batch of "
                        f"{config.batch_size}; lower --batch-size")  # fmt: skip
    state, meta, amp_dtype = _build_state(config, d, classes, len(train_sampler) // config.batch_size)
    # SyncBatchNorm normalises over every process's images: one per process is enough there.
    min_images = 1 if config.sync_bn and d.distributed else min_train_batch(state.model, config.input_size,
                                                                            len(config.mean))  # fmt: skip
    if config.batch_size < min_images:
        raise PPMAError(f"batch_size: {config.model} at {config.input_size} px cannot train on 1 image per step "
                        f"and process: its BatchNorm layers see one value per channel and image (a 1x1 map) and "
                        f"cannot normalise a single image; use --batch-size 2 or more"
                        + (" (or --sync-bn)" if d.distributed else ""))  # fmt: skip
    mixup, loss_fn = _build_loss(config, len(classes))
    rng_states = None
    changes: list[str] = []
    if resume_path is not None:
        ckpt = state.load(resume_path, expect=meta, contents=saved)
        state.epoch_stats = _resumed_share(state.epoch_stats, d)
        rng_states = ckpt["rng"]
        changes = changed_settings(ckpt.get("config"), config.to_dict(), _NOT_RESULTS)
        state.scheduler.step_update(num_updates=state.step)
    log = RunLog(folder.path, d.is_main, tensorboard=config.tensorboard)
    if resume_path is not None:  # the log is the checkpoint's history, whichever folder it continues in
        log.restart(state.history)
    if changes:  # allowed (a longer schedule, a smaller batch for a smaller GPU), but never silently
        log.print(f"resume: settings changed from the saved run: {', '.join(changes)}; "
                  f"the result will differ from an unbroken run")  # fmt: skip
    folder.write_text("config.yaml", _yaml(config.to_dict()))
    where = describe_data(config)
    res = meta["resolved"]
    log.print(
        f"ppma train: {config.model} ({res['params'] / 1e6:.2f} M params, {len(classes)} classes) on {where}: "
        f"{len(train_set)} train / {len(val_set)} val images, {d.world_size} process(es) on {d.device}, "
        f"total batch {res['total_batch']}, lr {res['lr']:.2e}, amp {res['amp']}, output {folder.path}"
        + (f"; resumed at epoch {state.epoch + 1} step {state.step}" if resume_path else "")
        + describe_folders(train_set, val_set)  # non-image files in the class folders, once per run
    )
    # Training RNG: per rank, restored exactly on resume (the augmentation RNG is per sample, see data.py).
    if rng_states is None:
        seed_everything(config.seed + d.rank)
    elif not restore_rank_rng(rng_states, d, config.seed + 1000 * state.step):
        log.print(f"resume: saved with {len(rng_states)} processes, now {d.world_size}: RNG reseeded")
    return _Run(config, d, folder, log, state, _wrap(state.model, config, d), train_sampler, train_loader,
                val_loader, mixup, loss_fn, amp_dtype, meta, min_images)  # fmt: skip


def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def _build_state(
    config: TrainConfig, d: DistInfo, classes: list[str], updates_per_epoch: int
) -> tuple[RunState, dict[str, Any], torch.dtype | None]:
    """Model, optimizer, schedule, scaler and EMA (the same initial weights on every rank: seeded before
    creation), the checkpoint metadata, and the autocast dtype."""
    seed_everything(config.seed)
    model = build_model(config, len(classes)).to(d.device)
    total_batch = config.batch_size * d.world_size
    lr = resolve_lr(config, total_batch)
    optimizer = build_optimizer(model, config, lr)
    scheduler = _build_scheduler(optimizer, config, updates_per_epoch)
    amp_dtype = amp_dtype_for(config.amp, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    ema_decay = config.ema_decay ** (total_batch / config.lr_base_size)  # same time constant in images
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=ema_decay, use_warmup=config.ema_warmup)
    resolved = {"lr": lr, "total_batch": total_batch, "world_size": d.world_size, "ema_decay": ema_decay,
                "amp": str(amp_dtype).removeprefix("torch."), "params": sum(p.numel() for p in model.parameters())}
    meta = {**model_card(config, classes), "num_classes": len(classes), "config": config.to_dict(),
            "resolved": resolved}  # fmt: skip
    return RunState(model, optimizer, scheduler, scaler, ema), meta, amp_dtype


def _wrap(model: nn.Module, config: TrainConfig, d: DistInfo) -> nn.Module:
    """The model as trained: SyncBatchNorm and DDP across processes, ``torch.compile`` if asked."""
    if config.sync_bn and d.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if d.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return torch.compile(model) if config.compile else model


def _save_last(r: _Run) -> None:
    """``last.pth``; a collective (every rank's random states and epoch sums are gathered), rank 0 writes."""
    rng = all_rng_states(r.d)
    stats = _epoch_totals(r.state.epoch_stats, r.d)
    if r.d.is_main:
        r.folder.save(r.state.checkpoint(r.meta, rng, stats))


# The epoch's running sums over processes. last.pth keeps their totals (it kept rank 0's share, which a run
# resumed under another process count multiplied by its own count); resumed, rank 0 holds them, the others
# start from zero (``_resumed_share``), and the epoch's end sums them as usual.
_SUMMED = ("loss_sum", "images", "unused_images")


def _epoch_totals(stats: dict[str, Any], d: DistInfo) -> dict[str, Any]:
    """``stats`` with its sums over all processes (a collective; ``stats`` itself in a single process)."""
    if not d.distributed:
        return stats
    sums = d.all_reduce_sum([stats[k] for k in _SUMMED])
    return {**stats, **{k: type(stats[k])(v) for k, v in zip(_SUMMED, sums, strict=True)},
            "skipped": [path for paths in d.all_gather(stats["skipped"]) for path in paths],
            "time": max(d.all_gather(stats["time"]))}  # fmt: skip


def _resumed_share(stats: dict[str, Any], d: DistInfo) -> dict[str, Any]:
    """A process's part of the saved totals: all of them on rank 0, none elsewhere (the position, ``seen``,
    and ``skipped_steps``, which every process counts alike, stay)."""
    if d.is_main:
        return stats
    return {**stats, **{k: type(stats[k])(0) for k in _SUMMED}, "skipped": [], "time": 0.0}


def _train_epoch(r: _Run) -> bool:
    """The (rest of the) current epoch; True when the run stops inside it (``stop_after_steps``)."""
    config, state = r.config, r.state

    def on_step() -> bool:
        state.epoch_stats["seen"] += config.batch_size * r.d.world_size
        if config.stop_after_steps is not None and state.step >= config.stop_after_steps:
            r.stopped = True
            return True
        if config.save_every_steps and state.step % config.save_every_steps == 0:
            _save_last(r)
        signum = r.folder.stop_requested()
        if signum:  # SIGTERM / SIGINT: save where the run stands, then stop
            _save_last(r)
            raise r.folder.stopped(signum, f"epoch {state.epoch + 1}, step {state.step}")
        return False

    # Skip what the epoch has consumed, not steps x batch size: a run resumed with another --batch-size or
    # process count would train some images twice (or never) in this epoch.
    r.train_sampler.set_epoch(state.epoch, skip=state.epoch_stats["seen"])
    # a resumed epoch's bar starts where it stopped (the steps done, of all the epoch's steps)
    bar = progress_bar(r.train_loader, state.step_in_epoch + len(r.train_loader), f"epoch {state.epoch + 1}/"
                       f"{config.epochs}", config.progress, r.d.rank, initial=state.step_in_epoch)  # fmt: skip
    if train_one_epoch(r.train_model, r.train_loader, state, r.loss_fn, r.mixup, r.d.device, r.amp_dtype,
                       config.clip_grad, on_step, bar, dist_info=r.d, min_images=r.min_images):  # fmt: skip
        return True
    bar.close()
    return False


def _end_epoch(r: _Run) -> None:
    """Evaluate the model and the EMA, log the epoch, keep the best weights, write ``last.pth``."""
    config, state, d, ema = r.config, r.state, r.d, r.state.ema
    stats = state.epoch_stats
    loss_sum, images, n_skipped, unused = d.all_reduce_sum([stats["loss_sum"], stats["images"],
                                                             len(stats["skipped"]), stats.get("unused_images", 0)])
    skipped_steps = stats.get("skipped_steps", 0)  # the ranks skip together: the same count everywhere
    train_time = max(d.all_gather(stats["time"]))
    if d.distributed:  # each rank's last forward moved its own BatchNorm statistics: take rank 0's everywhere
        from timm.utils import distribute_bn

        distribute_bn(state.model, d.world_size, reduce=False)
        if ema is not None:
            distribute_bn(ema.module, d.world_size, reduce=False)
    metrics = evaluate(state.model, r.val_loader, d.device, r.amp_dtype, d)
    ema_metrics = evaluate(ema.module, r.val_loader, d.device, r.amp_dtype, d) if ema is not None else {}
    record = {
        "epoch": state.epoch + 1, "epochs": config.epochs, "step": state.step,
        "lr": state.optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(images, 1),
        "train_images_per_s": images / max(train_time, 1e-9), "train_time_s": train_time, "top1": metrics["top1"],
        "top5": metrics["top5"], "loss": metrics["loss"], "eval_images_per_s": metrics["images_per_s"],
        "val_images": metrics["images"], "train_images": int(images), "ema_top1": ema_metrics.get("top1"),
        "ema_top5": ema_metrics.get("top5"), "ema_loss": ema_metrics.get("loss"),
        "skipped_images": int(n_skipped) + metrics["skipped"], "skipped_steps": int(skipped_steps),
        "unused_images": int(unused), "time_s": train_time,
    }  # fmt: skip
    skipped_note = describe_skipped(stats["skipped"])
    state.history.append(record)
    state.epoch, state.step_in_epoch, state.epoch_stats = state.epoch + 1, 0, new_epoch_stats()
    score = record["ema_top1"] if ema is not None else record["top1"]
    if score > state.best_top1:
        state.best_top1, state.best_epoch = score, state.epoch
        best = {"format": 0, "task": "classify", **r.meta, "epoch": state.epoch, "metrics": record,
                "model": state.model.state_dict()}  # weights and metadata only: for evaluation and release
        if ema is not None:
            best["model_ema"] = ema.module.state_dict()
        r.folder.save(best, "best.pth")
    _save_last(r)
    r.log.write(record, _epoch_line(record), step_key="epoch")
    if record["skipped_images"]:
        r.log.print(f"  epoch {state.epoch}: {record['skipped_images']} unreadable image(s) skipped in all "
                    f"processes; rank 0: {skipped_note or 'none'}")  # fmt: skip
    if record["skipped_steps"]:
        r.log.print(f"  epoch {state.epoch}: {record['skipped_steps']} step(s) skipped, their batch left with fewer "
                    f"than {r.min_images} usable image(s) per process ({record['unused_images']} readable "
                    f"image(s) not trained on)")  # fmt: skip


def _epoch_line(record: dict[str, Any]) -> str:
    ema = f"  ema top-1 {record['ema_top1']:.2f}" if record.get("ema_top1") is not None else ""
    return (f"epoch {record['epoch']:>3}/{record['epochs']}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"val top-1 {record['top1']:.2f} top-5 {record['top5']:.2f}{ema}  "
            f"{record['train_images_per_s']:.0f} img/s  {record['time_s']:.0f} s")  # fmt: skip


def _finish(r: _Run) -> dict[str, Any]:
    """Curves, and the summary ``run`` returns."""
    state, out = r.state, r.folder.path
    if r.d.is_main and r.config.plot and state.history and not r.stopped:
        plot_curves(state.history, out / "curves.png")
    r.log.close()
    r.d.barrier()
    return _summary(state.history, state.best_top1, state.best_epoch, state.ema is not None, r.meta["resolved"],
                    state.epoch, state.step, out, r.stopped)  # fmt: skip


def _summary(
    history: list[dict[str, Any]],
    best_top1: float | None,
    best_epoch: int,
    ema: bool,
    res: dict[str, Any],
    epochs: int,
    steps: int,
    out: Path,
    stopped: bool,
    already_finished: str | None = None,
) -> dict[str, Any]:
    """The dict ``run`` returns (its docstring)."""
    last = history[-1] if history else {}
    key = "ema_" if ema else ""
    return {
        "best_top1": best_top1 if history else None,
        "best_epoch": best_epoch,
        "final_top1": last.get(key + "top1"),
        "final_top5": last.get(key + "top5"),
        "final_loss": last.get(key + "loss"),
        "final_top1_model": last.get("top1"),
        "final_top1_ema": last.get("ema_top1"),
        "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])) if last else None,
        "eval_images_per_s": float(np.mean([h["eval_images_per_s"] for h in history])) if last else None,
        "params": res.get("params"),
        "epochs": epochs,
        "steps": steps,
        "lr": res.get("lr"),
        "total_batch": res.get("total_batch"),
        "output_dir": str(out),
        "best_checkpoint": str(out / "best.pth"),
        "last_checkpoint": str(out / "last.pth"),
        "stopped": stopped,
        "skipped_images": sum(h["skipped_images"] for h in history),
        "history": history,
        "already_finished": already_finished,
    }


# ---- evaluating a checkpoint --------------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_path: str | None = None,
    model_name: str | None = None,
    weights: str = "auto",
    batch_size: int = 128,
    workers: int | None = None,
    device: str = "auto",
    input_size: int | None = None,
    crop_pct: float | None = None,
    amp: str = "auto",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Top-1, top-5, loss and images/s of a checkpoint (ours or a published ``.pth``) on a class-folder set.

    The evaluation transform is the published one: resize to ``input_size / crop_pct`` (256 for 224),
    centre crop. Our checkpoints (training, ``convert`` output, exports) carry their model name, classes
    and transform; for published files ``model_name`` is needed and the model's timm defaults (224,
    crop 0.875, bicubic, ImageNet mean/std) apply, said in ``metrics["assumed"]``.

    Args:
        checkpoint: a ``.pth`` / ``.safetensors`` file.
        data_path: a folder of class folders, or an ImageNet root with ``val/``; None: the digits val split.
        model_name: timm name; None: read from the checkpoint.
        weights: ``"auto"`` (the EMA where the file has one), ``"ema"`` or ``"model"``.
        workers: data-loading processes; None: 4, at most the CPUs available (``default_workers``).
        input_size, crop_pct: override the evaluation transform.
        precision: ``fp32``, ``bf16``, ``int8`` or ``auto`` (``ppma.for_inference``); other than fp32,
            the converted model runs without autocast.

    ``metrics["not_images"]``: the non-image files left out of ``data_path``'s class folders ('' if none).
    """
    from ..inference import for_inference, resolve_precision

    precision = resolve_precision(precision, pick_device(device))  # an unusable one fails before any work
    spec = _classifier_spec(checkpoint, model_name, weights, input_size, crop_pct, data_path)
    dataset, classes = build_eval_dataset(data_path, spec.config)
    if len(classes) != spec.num_classes:
        raise PPMAError(
            f"eval: {checkpoint} has {spec.num_classes} classes but the data has {len(classes)} class folders"
        )
    if spec.classes and spec.classes != list(classes) and data_path is not None:
        first = next(a for a, b in zip(spec.classes, classes, strict=False) if a != b)
        raise PPMAError(f"eval: the class folders differ from the ones {checkpoint} was trained on (first: {first!r})")

    d = setup_distributed(device)
    try:
        model = spec.build().to(d.device)
        amp_dtype = amp_dtype_for(amp, d.device)
        if precision != "fp32":
            model, amp_dtype = for_inference(model, precision), None
        workers = default_workers() if workers is None else workers
        loader = make_loader(dataset, ShardSampler(len(dataset), d.world_size, d.rank), batch_size, workers,
                             drop_last=False, pin_memory=d.device.type == "cuda")  # fmt: skip
        metrics = evaluate(model, loader, d.device, amp_dtype, d, progress=None)
    finally:
        cleanup_distributed(d)
    metrics.update(model=spec.model_name, weights=spec.weights_label, classes=spec.num_classes,
                   input_size=spec.config.input_size, crop_pct=spec.config.crop_pct,
                   interpolation=spec.config.interpolation, assumed=spec.assumed, precision=precision,
                   not_images=describe_folders(dataset).removeprefix("; "))  # fmt: skip
    return metrics


@dataclasses.dataclass
class _ClassifierSpec:
    """What a classification checkpoint holds: model name and kwargs, weights, classes, eval transform."""

    checkpoint: str | os.PathLike
    model_name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    use_ema: bool
    classes: list[str] | None  # ours store their class names; published files do not
    config: TrainConfig  # carries the evaluation transform
    assumed: str = ""  # what the file did not say and was assumed ('' for our files)
    weights_label: str = ""  # 'ema' or 'model': which weights these are (a converted file says which it holds)
    # The dict _classifier_spec read, handed to the first build so the file is read once; dropped there,
    # as the model then holds copies of the weights (a later build reads the file again).
    contents: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    def build(self) -> nn.Module:
        """The model with the checkpoint's weights, in eval mode."""
        from ..checkpoint import load_into

        model = timm.create_model(self.model_name, num_classes=self.num_classes, **self.model_kwargs)
        contents, self.contents = self.contents, None
        try:
            load_into(model, self.checkpoint, use_ema=self.use_ema, contents=contents)
        except ValueError as e:
            raise PPMAError(
                f"checkpoint: {self.checkpoint} does not fit {self.model_name}: {one_line(str(e))[:300]}"
            ) from e
        return model.eval()


def _classifier_spec(
    checkpoint: str | os.PathLike,
    model_name: str | None,
    weights: str,
    input_size: int | None,
    crop_pct: float | None,
    data_path: str | None = None,
    *,
    contents: dict[str, Any] | None = None,
) -> _ClassifierSpec:
    """Model, weights, classes and evaluation transform of a checkpoint: from its card (``ppma.checkpoint``),
    else the model's timm defaults, said in ``assumed``.

    ``contents``: the dict already read from ``checkpoint`` (``read_checkpoint``); the file is then not read.
    """
    from ..checkpoint import extract_state_dict, read_card, read_checkpoint
    from ..models.ppma import checkpoint_filter_fn

    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights: expected auto, ema or model, got {weights!r}")
    ckpt = read_checkpoint(checkpoint) if contents is None else contents
    card = read_card(ckpt)
    use_ema = isinstance(ckpt.get("model_ema"), dict) if weights == "auto" else weights == "ema"
    model_name = model_name or card["model_name"]
    if not model_name:
        raise ValueError(f"model: {checkpoint} does not name its model (weights only); pass --model (e.g. ppma_tiny)")
    if not timm.is_model(model_name):
        raise ValueError(f"model: unknown name {model_name!r}; PPMA models: {', '.join(timm.list_models('ppma_*'))}")
    state = checkpoint_filter_fn(extract_state_dict(ckpt, use_ema))
    if "head.fc.weight" not in state:
        raise PPMAError(f"checkpoint: {checkpoint} has no classifier (head.fc): a dense-task backbone?")

    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in saved.items() if k in known}  # the run's val_split etc., where the file has them
    transform, assumed = card["transform"], ""
    if transform is None:  # published or foreign: the model's timm defaults (224, 0.875, bicubic, ImageNet)
        cfg = timm.get_pretrained_cfg(model_name).to_dict()
        transform = dict(input_size=cfg["input_size"][-1], crop_pct=cfg["crop_pct"],
                         interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])  # fmt: skip
        assumed = (f"{Path(checkpoint).name} stores no evaluation transform; assumed {model_name}'s defaults: "
                   f"{transform['input_size']} px, crop {transform['crop_pct']:.3f}, {transform['interpolation']}, "
                   f"mean {_numbers(transform['mean'])}, std {_numbers(transform['std'])}")  # fmt: skip
        base.setdefault("data_path", data_path)
    # "is not None": a 0 given is refused by TrainConfig, not silently replaced by the checkpoint's value
    overrides = {k: v for k, v in (("input_size", input_size), ("crop_pct", crop_pct)) if v is not None}
    transform = {**transform, "mean": tuple(transform["mean"]), "std": tuple(transform["std"]), **overrides}
    config = TrainConfig(**{**base, **transform})
    label = "ema" if use_ema else ckpt["weights"] if ckpt.get("weights") in ("ema", "model") else "model"
    return _ClassifierSpec(checkpoint, model_name, card["model_kwargs"], state["head.fc.weight"].shape[0],
                           use_ema, card["classes"], config, assumed, label, contents=ckpt)  # fmt: skip


def _numbers(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


class Predictions(list):
    """``predict_images``' records (a list), with ``assumed``: what the checkpoint did not say ('' if nothing),
    and ``notes``: the non-image files skipped in each folder given."""

    assumed: str = ""
    notes: list[str] = []


def predict_images(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    model_name: str | None = None,
    weights: str = "auto",
    topk: int = 5,
    device: str = "auto",
    input_size: int | None = None,
    crop_pct: float | None = None,
    precision: str = "fp32",
) -> Predictions:
    """The ``topk`` classes and probabilities of each image file, with the checkpoint's evaluation transform.

    A folder in ``images`` stands for the images at any depth below it (``ppma.images.image_files``:
    sorted, hidden files left out, other files counted in ``.notes``); a folder without images gets an
    ``error`` record, as an unreadable image does.

    Class names: the checkpoint's own (ours), ImageNet's for a 1000-class published file (the list timm
    ships), else ``class_<i>``. An image that cannot be read (``ppma.images.load_rgb``: missing, damaged,
    too large, unknown value range) does not stop the others: its record holds ``error`` instead of
    ``top``. If no image can be read, a ``PPMAError`` names the first.

    Returns:
        One dict per image, in order: ``file`` and ``top``, a list of (class name, probability), most
        likely first, or ``file`` and ``error``. ``.assumed`` says what the checkpoint did not store.
    """
    from ..images import IMAGE_EXTENSIONS, describe_skipped_files, image_files, load_or_record, require_a_readable_image
    from ..inference import for_inference, resolve_precision

    if topk < 1:
        raise ValueError(f"topk: expected at least 1, got {topk}")
    if not images:
        raise ValueError("images: none given")
    files, notes = [], []
    for path in images:
        if not Path(path).is_dir():
            files.append(path)
            continue
        found, skipped = image_files(path)
        files.extend(found or [path])  # an empty folder: an error record below
        if skipped:
            notes.append(f"{path}: {describe_skipped_files(skipped)}")
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    spec = _classifier_spec(checkpoint, model_name, weights, input_size, crop_pct)
    assumed = [spec.assumed] if spec.assumed else []
    names = spec.classes
    if names is None and spec.num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        names = [info.index_to_description(i) for i in range(1000)]
        assumed.append("no class names stored: ImageNet-1K's")
    elif names is None:
        assumed.append(f"no class names stored: class_0..class_{spec.num_classes - 1}")
    names = names or [f"class_{i}" for i in range(spec.num_classes)]
    transform = build_transform(spec.config, False)
    model = spec.build().to(dev)
    if precision != "fp32":
        model = for_inference(model, precision)
    records = Predictions()
    records.assumed, records.notes = "; ".join(assumed), notes
    for path in files:
        if Path(path).is_dir():
            error = f"{path}: a folder without images ({' '.join(IMAGE_EXTENSIONS)})"
            records.append(dict(file=str(path), error=error))
            continue
        image = load_or_record(path, records)
        if image is None:
            continue
        with torch.inference_mode():
            probs = model(transform(image)[None].to(dev)).float().softmax(-1)[0]
        values, indices = probs.topk(min(topk, spec.num_classes))
        records.append(dict(file=str(path), top=[(names[i], float(p)) for p, i in zip(values, indices, strict=True)]))
    require_a_readable_image(records)
    return records
