"""The training and evaluation loops, and ``run(config)`` that wires them to timm's parts.

``run`` builds, from a ``TrainConfig``: the datasets and loaders (``data.py``), the model
(``timm.create_model``), AdamW with timm's parameter groups (no weight decay on norms, biases and the
model's ``no_weight_decay()``: ``dt_bias``, ``A_log``), timm's cosine schedule with warm-up stepped every
update, timm Mixup/CutMix and its soft-target or label-smoothing loss, timm ``ModelEmaV3``, autocast
(bf16/fp16 with a grad scaler), optional clipping and ``torch.compile``, and DDP under ``torchrun``.
Then it loops: ``train_one_epoch`` -> ``evaluate`` (model and EMA) -> checkpoints -> log.
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

from ..distributed import (
    DistInfo,
    amp_dtype_for,
    autocast,
    cleanup_distributed,
    pick_device,
    seed_everything,
    setup_distributed,
    unwrap,
)
from ..errors import PPMAError
from .config import TrainConfig
from .data import (
    ResumableSampler,
    ShardSampler,
    build_datasets,
    build_eval_dataset,
    build_transform,
    describe_skipped,
    make_loader,
)
from .report import Reporter, plot_curves, progress_bar
from .state import RunState, capture_rng, find_resume_checkpoint, new_epoch_stats, restore_rng

__all__ = [
    "build_model",
    "build_optimizer",
    "evaluate",
    "evaluate_checkpoint",
    "predict_images",
    "resolve_lr",
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
    model = timm.create_model(config.model, num_classes=num_classes, **kwargs)
    if config.initial_checkpoint:
        from ..checkpoint import load_into

        try:
            load_into(model, config.initial_checkpoint)
        except ValueError as e:
            raise PPMAError(_one_line(str(e))) from e
    return model


def resolve_lr(config: TrainConfig, total_batch: int) -> float:
    """``config.lr``, or the linear scaling rule ``lr_base * total_batch / lr_base_size`` (5e-4 per 512 images)."""
    return config.lr if config.lr is not None else config.lr_base * total_batch / config.lr_base_size


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer with its two parameter groups: weight decay on weights of >= 2 dims, none on norms,
    biases and the names in ``model.no_weight_decay()`` (``dt_bias``, ``A_log``). Layer-scale gammas are
    (1, 1, 1, C), so they are decayed, as published."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=config.opt, lr=lr, weight_decay=config.weight_decay, eps=config.opt_eps)


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


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines())


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
) -> bool:
    """Train over ``loader`` (the rest of the epoch when resumed), updating ``state`` and its ``epoch_stats``.

    Each batch: mixup -> autocast forward -> (scaled) backward -> optional clip -> optimizer step -> EMA
    update -> scheduler step. ``on_step`` runs after every update and returns True to stop (a checkpoint
    or a simulated kill). Returns True when stopped early.

    A batch left with no usable image (all unreadable; mixup drops an odd last image) is skipped; with
    several processes the ranks first agree, so that all skip that update together (a rank that
    skipped alone would leave the others waiting in DDP's gradient all-reduce).
    """
    model.train()
    stats = state.epoch_stats
    bar = progress if progress is not None else loader
    unwrapped = unwrap(model)
    start = time.perf_counter() - stats["time"]
    for batch in bar:
        stats["skipped"].extend(batch.skipped)
        usable = len(batch) - (len(batch) % 2 if mixup is not None else 0)  # timm's Mixup pairs images
        if dist_info is not None and dist_info.distributed:
            usable = usable if dist_info.all_reduce_sum([float(usable == 0)])[0] == 0 else 0
        if usable > 0:
            images, targets = batch.images.to(device, non_blocking=True), batch.targets.to(device, non_blocking=True)
            images, targets = images[:usable], targets[:usable]
            if mixup is not None:
                images, targets = mixup(images, targets)
            with autocast(device, amp_dtype):
                loss = loss_fn(model(images), targets)
            if not math.isfinite(loss.item()):
                raise PPMAError(f"train: loss is {loss.item()} at step {state.step + 1}; lower --lr or set --clip-grad")
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            if clip_grad is not None:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            if state.ema is not None:
                state.ema.update(unwrapped, step=state.step + 1)
            stats["loss_sum"] += loss.item() * len(targets)
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


# ---- a whole run ------------------------------------------------------------------------------------------


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

    Returns:
        dict with ``best_top1``, ``best_epoch``, ``final_top1``, ``final_top5``, ``final_loss`` (of the
        weights the best checkpoint is chosen by: EMA when on), ``final_top1_model``, ``final_top1_ema``,
        ``train_images_per_s``, ``eval_images_per_s``, ``params``, ``epochs``, ``steps``, ``lr``,
        ``total_batch``, ``output_dir``, ``best_checkpoint``, ``last_checkpoint``, ``stopped``, ``skipped_images``.
    """
    config.validate()
    dist_info = setup_distributed(config.device)
    try:
        return _run(config, dist_info)
    finally:
        cleanup_distributed(dist_info)


def _run(config: TrainConfig, d: DistInfo) -> dict[str, Any]:
    resume_path = find_resume_checkpoint(config.resume, config.output_dir) if config.resume is not None else None
    out = _output_dir(config, resume_path, d)
    if resume_path is None and (out / "last.pth").exists():
        raise PPMAError(f"output_dir: {out} already holds a run (last.pth); --resume it or pick another --output-dir")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # Data. Every process reads the same folders; the sampler gives each its shard.
    train_set, val_set, classes = build_datasets(config)
    train_sampler = ResumableSampler(train_set, d.world_size, d.rank, config.seed)
    train_loader = make_loader(train_set, train_sampler, config.batch_size, config.workers, drop_last=True,
                               pin_memory=d.device.type == "cuda")  # fmt: skip
    val_loader = make_loader(val_set, ShardSampler(len(val_set), d.world_size, d.rank), config.batch_size,
                             config.workers, drop_last=False, pin_memory=d.device.type == "cuda")  # fmt: skip
    updates_per_epoch = len(train_sampler) // config.batch_size
    if updates_per_epoch == 0:
        raise PPMAError(f"data: {len(train_sampler)} training images per process, fewer than one batch of "
                        f"{config.batch_size}; lower --batch-size")  # fmt: skip

    # Model, optimizer, schedule, EMA: the same initial weights on every rank (seeded before creation).
    seed_everything(config.seed)
    model = build_model(config, len(classes)).to(d.device)
    params = sum(p.numel() for p in model.parameters())
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
    mixup, loss_fn = _build_loss(config, len(classes))
    state = RunState(model, optimizer, scheduler, scaler, ema)
    meta = {"model_name": config.model, "num_classes": len(classes), "classes": classes, "config": config.to_dict(),
            "resolved": {"lr": lr, "total_batch": total_batch, "world_size": d.world_size, "ema_decay": ema_decay,
                         "amp": str(amp_dtype).removeprefix("torch."), "params": params}}  # fmt: skip

    rng_states = None
    if resume_path is not None:
        ckpt = state.load(resume_path, expect=meta)
        rng_states = ckpt["rng"]
        scheduler.step_update(num_updates=state.step)

    train_model: nn.Module = model
    if config.sync_bn and d.distributed:
        train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
    if d.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [d.device.index] if d.device.type == "cuda" else None
        train_model = DistributedDataParallel(train_model, device_ids=device_ids)
    if config.compile:
        train_model = torch.compile(train_model)

    reporter = Reporter(out, d.rank, config.tensorboard)
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    where = "digits (built in)" if config.data_path is None else config.data_path
    reporter.print(
        f"ppma train: {config.model} ({params / 1e6:.2f} M params, {len(classes)} classes) on {where}: "
        f"{len(train_set)} train / {len(val_set)} val images, {d.world_size} process(es) on {d.device}, "
        f"total batch {total_batch}, lr {lr:.2e}, amp {meta['resolved']['amp']}, output {out}"
        + (f"; resumed at epoch {state.epoch + 1} step {state.step}" if resume_path else "")
    )

    # Training RNG: per rank, restored exactly on resume (the augmentation RNG is per sample, see data.py).
    if rng_states is not None:
        if len(rng_states) == d.world_size:
            restore_rng(rng_states[d.rank])
        else:
            reporter.print(f"resume: saved with {len(rng_states)} processes, now {d.world_size}: RNG reseeded")
            seed_everything(config.seed + d.rank + 1000 * state.step)
    else:
        seed_everything(config.seed + d.rank)

    def save_last() -> None:
        rng = d.all_gather(capture_rng())  # a collective: every rank calls it at the same steps
        if d.rank == 0:
            state.save(out / "last.pth", meta, rng)

    stopped = False

    def on_step() -> bool:
        nonlocal stopped
        if config.stop_after_steps is not None and state.step >= config.stop_after_steps:
            stopped = True
            return True
        if config.save_every_steps and state.step % config.save_every_steps == 0:
            save_last()
        return False

    while state.epoch < config.epochs and not stopped:
        epoch = state.epoch
        train_sampler.set_epoch(epoch, skip=state.step_in_epoch * config.batch_size)
        desc = f"epoch {epoch + 1}/{config.epochs}"
        bar = progress_bar(train_loader, len(train_loader), desc, config.progress, d.rank)
        if train_one_epoch(train_model, train_loader, state, loss_fn, mixup, d.device, amp_dtype, config.clip_grad,
                           on_step, bar, dist_info=d):  # fmt: skip
            break
        bar.close()
        stats = state.epoch_stats
        loss_sum, images, n_skipped = d.all_reduce_sum([stats["loss_sum"], stats["images"], len(stats["skipped"])])
        train_time = max(d.all_gather(stats["time"]))
        if d.distributed:  # each rank's last forward moved its own BatchNorm statistics: take rank 0's everywhere
            from timm.utils import distribute_bn

            distribute_bn(model, d.world_size, reduce=False)
            if ema is not None:
                distribute_bn(ema.module, d.world_size, reduce=False)
        metrics = evaluate(model, val_loader, d.device, amp_dtype, d)
        ema_metrics = evaluate(ema.module, val_loader, d.device, amp_dtype, d) if ema is not None else None
        record = {
            "epoch": epoch + 1, "epochs": config.epochs, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(images, 1), "train_images_per_s": images / max(train_time, 1e-9),
            "train_time_s": train_time, "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
            "eval_images_per_s": metrics["images_per_s"], "val_images": metrics["images"], "train_images": int(images),
            "ema_top1": ema_metrics["top1"] if ema_metrics else None,
            "ema_top5": ema_metrics["top5"] if ema_metrics else None,
            "ema_loss": ema_metrics["loss"] if ema_metrics else None,
            "skipped_images": int(n_skipped) + metrics["skipped"], "time_s": train_time,
        }  # fmt: skip
        skipped_note = describe_skipped(stats["skipped"])
        state.history.append(record)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        state.epoch_stats = new_epoch_stats()
        score = record["ema_top1"] if ema is not None else record["top1"]
        if score > state.best_top1:
            state.best_top1, state.best_epoch = score, epoch + 1
            if d.rank == 0:  # weights and metadata only: best.pth is for evaluation and release
                best = {"format": 0, **meta, "epoch": epoch + 1, "metrics": record, "model": model.state_dict()}
                if ema is not None:
                    best["model_ema"] = ema.module.state_dict()
                from ..checkpoint import atomic_save

                atomic_save(best, out / "best.pth")
        save_last()
        reporter.epoch(record)
        if record["skipped_images"]:
            reporter.print(f"  epoch {epoch + 1}: {record['skipped_images']} unreadable image(s) skipped in all "
                           f"processes; rank 0: {skipped_note or 'none'}")  # fmt: skip

    if d.rank == 0 and config.plot and state.history and not stopped:
        plot_curves(state.history, out / "curves.png")
    reporter.close()
    d.barrier()
    last = state.history[-1] if state.history else {}
    use_ema = ema is not None
    return {
        "best_top1": state.best_top1 if state.history else None,
        "best_epoch": state.best_epoch,
        "final_top1": last.get("ema_top1" if use_ema else "top1"),
        "final_top5": last.get("ema_top5" if use_ema else "top5"),
        "final_loss": last.get("ema_loss" if use_ema else "loss"),
        "final_top1_model": last.get("top1"),
        "final_top1_ema": last.get("ema_top1"),
        "train_images_per_s": float(np.mean([r["train_images_per_s"] for r in state.history])) if last else None,
        "eval_images_per_s": float(np.mean([r["eval_images_per_s"] for r in state.history])) if last else None,
        "params": params,
        "epochs": state.epoch,
        "steps": state.step,
        "lr": lr,
        "total_batch": total_batch,
        "output_dir": str(out),
        "best_checkpoint": str(out / "best.pth"),
        "last_checkpoint": str(out / "last.pth"),
        "stopped": stopped,
        "skipped_images": sum(r["skipped_images"] for r in state.history),
        "history": state.history,
    }


# ---- evaluating a checkpoint --------------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_path: str | None = None,
    model_name: str | None = None,
    weights: str = "auto",
    batch_size: int = 128,
    workers: int = 4,
    device: str = "auto",
    input_size: int | None = None,
    crop_pct: float | None = None,
    amp: str = "auto",
) -> dict[str, Any]:
    """Top-1, top-5, loss and images/s of a checkpoint (ours or a published ``.pth``) on a class-folder set.

    The evaluation transform is the published one: resize to ``input_size / crop_pct`` (256 for 224),
    centre crop. Our checkpoints carry their model name, classes and transform; for published files
    ``model_name`` is needed and the model's timm defaults (224, crop 0.875, bicubic) apply.

    Args:
        checkpoint: a ``.pth`` / ``.safetensors`` file.
        data_path: a folder of class folders, or an ImageNet root with ``val/``; None: the digits val split.
        model_name: timm name; None: read from the checkpoint.
        weights: ``"auto"`` (the EMA where the file has one), ``"ema"`` or ``"model"``.
        input_size, crop_pct: override the evaluation transform.
    """
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
        loader = make_loader(dataset, ShardSampler(len(dataset), d.world_size, d.rank), batch_size, workers,
                             drop_last=False, pin_memory=d.device.type == "cuda")  # fmt: skip
        metrics = evaluate(model, loader, d.device, amp_dtype_for(amp, d.device), d, progress=None)
    finally:
        cleanup_distributed(d)
    metrics.update(model=spec.model_name, weights="ema" if spec.use_ema else "model", classes=spec.num_classes,
                   input_size=spec.config.input_size, crop_pct=spec.config.crop_pct)  # fmt: skip
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

    def build(self) -> nn.Module:
        """The model with the checkpoint's weights, in eval mode."""
        from ..checkpoint import load_into

        model = timm.create_model(self.model_name, num_classes=self.num_classes, **self.model_kwargs)
        try:
            load_into(model, self.checkpoint, use_ema=self.use_ema)
        except ValueError as e:
            raise PPMAError(
                f"checkpoint: {self.checkpoint} does not fit {self.model_name}: {_one_line(str(e))[:300]}"
            ) from e
        return model.eval()


def _classifier_spec(
    checkpoint: str | os.PathLike,
    model_name: str | None,
    weights: str,
    input_size: int | None,
    crop_pct: float | None,
    data_path: str | None = None,
) -> _ClassifierSpec:
    from ..checkpoint import extract_state_dict, read_checkpoint
    from ..models.ppma import checkpoint_filter_fn

    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights: expected auto, ema or model, got {weights!r}")
    ckpt = read_checkpoint(checkpoint)
    use_ema = isinstance(ckpt.get("model_ema"), dict) if weights == "auto" else weights == "ema"
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    published_name = getattr(ckpt.get("args"), "model", None)  # the published scripts' argparse.Namespace
    model_name = model_name or ckpt.get("model_name") or (published_name if timm.is_model(published_name) else None)
    if not model_name:
        raise ValueError(f"model: {checkpoint} does not name a known model; pass --model (e.g. ppma_tiny)")
    if not timm.is_model(model_name):
        raise ValueError(f"model: unknown name {model_name!r}; PPMA models: {', '.join(timm.list_models('ppma_*'))}")
    state = checkpoint_filter_fn(extract_state_dict(ckpt, use_ema))
    if "head.fc.weight" not in state:
        raise PPMAError(f"checkpoint: {checkpoint} has no classifier (head.fc): a dense-task backbone?")

    # The transform: ours from the run's config; published: the model's timm defaults (224, 0.875, bicubic).
    cfg = timm.get_pretrained_cfg(model_name).to_dict()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in saved.items() if k in known} if saved else {}
    if not base:
        base = dict(input_size=cfg["input_size"][-1], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
                    mean=cfg["mean"], std=cfg["std"], data_path=data_path)  # fmt: skip
    config = TrainConfig(**{**base, **({"input_size": input_size} if input_size else {}),
                            **({"crop_pct": crop_pct} if crop_pct else {})})  # fmt: skip
    classes = list(ckpt["classes"]) if ckpt.get("classes") else None
    return _ClassifierSpec(checkpoint, model_name, saved.get("model_kwargs") or {}, state["head.fc.weight"].shape[0],
                           use_ema, classes, config)  # fmt: skip


def predict_images(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    model_name: str | None = None,
    weights: str = "auto",
    topk: int = 5,
    device: str = "auto",
    input_size: int | None = None,
    crop_pct: float | None = None,
) -> list[dict[str, Any]]:
    """The ``topk`` classes and probabilities of each image file, with the checkpoint's evaluation transform.

    Class names: the checkpoint's own (ours), ImageNet's for a 1000-class published file (the list timm
    ships), else ``class_<i>``.

    Returns:
        One dict per image: ``file`` and ``top``, a list of (class name, probability), most likely first.
    """
    from PIL import Image

    if topk < 1:
        raise ValueError(f"topk: expected at least 1, got {topk}")
    spec = _classifier_spec(checkpoint, model_name, weights, input_size, crop_pct)
    names = spec.classes
    if names is None and spec.num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        names = [info.index_to_description(i) for i in range(1000)]
    names = names or [f"class_{i}" for i in range(spec.num_classes)]
    transform = build_transform(spec.config, False)
    dev = pick_device(device)
    model = spec.build().to(dev)
    records = []
    for path in images:
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise PPMAError(f"predict: cannot read image {path} ({type(e).__name__})") from e
        with torch.inference_mode():
            probs = model(transform(image)[None].to(dev)).float().softmax(-1)[0]
        values, indices = probs.topk(min(topk, spec.num_classes))
        records.append(dict(file=str(path), top=[(names[i], float(p)) for p, i in zip(values, indices, strict=True)]))
    return records
