"""UPerNet on a PPMA backbone, trained and scored like the published ADE20K run (MMSegmentation 0.x).

Published setting (design.md §9): UPerHead (pyramid pooling 1, 2, 3, 6 on stage 4 + FPN fusion of
all four stages, 512 channels, dropout 0.1) with an auxiliary FCN head on stage 3 (256 channels,
loss weight 0.4); 512x512 crops from images rescaled by 0.5-2.0 around 2048x512; AdamW (lr 6e-5,
weight decay 0.01, as in the Swin/RMT configs the authors follow), 1500 linear warm-up iterations,
poly decay (power 1) over 160k iterations, 16 images per step (2 per GPU on 8 GPUs).

segmentation_models_pytorch (0.6) has a UPerNet with timm encoders, but it adds its own LayerNorm on
every stage map (ours already carry the published per-stage LayerNorm) and has no auxiliary FCN
head, so the compact head here follows MMSegmentation's ``UPerHead`` / ``FCNHead`` instead, with
their module names (``decode_head.psp_modules``, ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``,
``conv_seg``; ``auxiliary_head.convs``), so a published segmentor's ``state_dict`` maps one to one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..checkpoint import atomic_write_text, read_checkpoint
from ..images import load_or_record, require_a_readable_image
from ..runtime import (
    DistInfo,
    autocast,
    cleanup_distributed,
    main_process_first,
    progress_bar,
    rng_untouched,
    setup_distributed,
    unwrap,
    warmup_poly,
)
from ..runtime.config import option, resume_option
from .backbone import checkpoint_variant, create_backbone, parse_stage_flags
from .data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    IGNORE,
    SegmentationSet,
    keep_ratio_scale,
    normalize,
    palette,
    prediction_inputs,
    read_class_names,
    segmentation_collate,
    segmentation_pairs,
    to_tensor,
)
from .engine import DenseRun, initial_weights, load_weights, locked_set_up, read_run_info, show_progress, start_run
from .metrics import confusion_matrix, segmentation_scores

__all__ = [
    "SegmentConfig",
    "UPerHead",
    "FCNHead",
    "UPerNet",
    "build_upernet",
    "train_segmentation",
    "evaluate_segmentation",
    "predict_segmentation",
    "infer_logits",
    "MS_RATIOS",
]

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the published multi-scale test ratios


class ConvModule(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU, named ``conv`` / ``bn`` like MMCV's ConvModule."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """Pyramid pooling on the last map, top-down FPN over all four, fused at stride 4.

    Args:
        in_channels: C_i of the four stage maps.
        channels: width of every inner conv.
        num_classes: K.
        pool_scales: output sizes of the pyramid pooling.
        dropout: Dropout2d rate before the classifier.

    Input: four (B, C_i, H_i, W_i) maps; output: (B, K, H_0, W_0) logits at the first map's size.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_last, h, w) -> (B, channels, h, w): the map and its pooled summaries, concatenated and fused."""
        pooled = [_resize(m(x), x.shape[2:]) for m in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=False)] + [self.psp_forward(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        outs = [outs[0]] + [_resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """Auxiliary head on one stage map: conv3x3 + BN + ReLU, dropout, 1x1 classifier (B, C, h, w) -> (B, K, h, w)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class UPerNet(nn.Module):
    """PPMA backbone + UPerHead (+ auxiliary FCNHead on stage 3 while training).

    ``forward`` maps (B, 3, H, W) to (B, K, H, W) logits; in training mode with an auxiliary head it
    returns ``(logits, aux_logits)``, both at (H, W).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, channels: int = 512, aux_channels: int = 256, aux_index: int = 2
    ) -> None:
        super().__init__()
        in_channels = backbone.feature_info.channels()
        self.backbone = backbone
        self.decode_head = UPerHead(in_channels, channels, num_classes)
        self.auxiliary_head = FCNHead(in_channels[aux_index], aux_channels, num_classes) if aux_channels else None
        self.aux_index = aux_index
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)  # four (B, C_i, H/2^(i+2), W/2^(i+2)) maps
        logits = _resize(self.decode_head(feats), x.shape[2:])
        if self.training and self.auxiliary_head is not None:
            return logits, _resize(self.auxiliary_head(feats[self.aux_index]), x.shape[2:])
        return logits


def build_upernet(
    num_classes: int,
    backbone: str = "ppma_tiny",
    pretrained: str | None = None,
    grad_checkpointing: bool | str | Sequence[bool] | None = None,
    drop_path_rate: float | None = None,
    channels: int = 512,
    aux_channels: int = 256,
) -> UPerNet:
    """UPerNet on a PPMA backbone (``pretrained``: see ``create_backbone``); ``aux_channels=0``: no aux head."""
    if num_classes < 1:
        raise ValueError(f"num_classes: expected at least 1, got {num_classes}")
    body = create_backbone(backbone, pretrained, grad_checkpointing, drop_path_rate)
    return UPerNet(body, num_classes, channels, aux_channels)


# ---- configuration and data --------------------------------------------------------------------------------


@dataclass
class SegmentConfig:
    """UPerNet training run; defaults are the published ADE20K 160k schedule."""

    data: str = option("", "dataset root, or 'builtin' for the bundled example set")
    layout: str = "ade20k"  # "ade20k" (labels 0 = ignore, 1..K) or "cityscapes" (labelTrainIds, 255 = ignore)
    train_split: str = ""  # "" : training / train
    val_split: str = ""  # "" : validation / val
    num_classes: int = 0  # 0: classes.json beside the data, else 150 (ADE20K) / 19 (Cityscapes)
    output: str = "runs/segment"
    backbone: str = "ppma_tiny"
    pretrained: str = option("", "backbone checkpoint (classification or dense; ours or published), or ppma_tiny.in1k")
    iters: int = 160_000
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    batch_size: int = 2  # per process
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)  # (long, short) of the keep-ratio rescale
    channels: int = 512
    aux_channels: int = 256  # 0: no auxiliary head
    aux_weight: float = 0.4
    drop_path_rate: float | None = None
    grad_checkpointing: str = option("none", "per-stage gradient checkpointing: all, none, or stages like 1,2")
    amp: bool = option(False, "bf16 autocast")
    eval_every: int = 16_000
    save_every: int = 1000  # iterations between checkpoints (last.pth) besides those at evaluations; 0: none
    stop_after: int = 0  # stop at once after this many iterations, as if killed (tests of resume); 0: never
    workers: int = 2
    seed: int = 0
    threads: int = option(0, "CPU threads per process (torch.set_num_threads); 0: torch's default. Results "
                             "repeat bit for bit only with the same count")
    device: str = "auto"
    resume: str | None = resume_option()
    quiet: bool = option(False, "no log lines on stdout (log.jsonl still written); no progress bar unless --progress")
    progress: bool | None = option(None, "progress bar; none = only on a terminal, on rank 0")

    def resolved(self) -> SegmentConfig:
        """A copy with the layout checked and default splits filled in."""
        if self.layout not in ("ade20k", "cityscapes"):
            raise ValueError(f"layout: expected 'ade20k' or 'cityscapes', got {self.layout!r}")
        out = replace(self)
        ade = self.layout == "ade20k"
        out.train_split = self.train_split or ("training" if ade else "train")
        out.val_split = self.val_split or ("validation" if ade else "val")
        out.scale = tuple(self.scale)
        if out.threads < 0:
            raise ValueError(f"threads: must be >= 0 (0: torch's default), got {out.threads}")
        if out.iters < 1:
            raise ValueError(f"iters: expected at least 1, got {out.iters}")
        parse_stage_flags(out.grad_checkpointing)  # a bad value fails here, before the run folder is made
        return out

    @classmethod
    def builtin_example(cls) -> SegmentConfig:
        """The built-in coins + page run: ppma_nano, 128x128 crops, narrow heads, a few CPU minutes."""
        return cls(
            data="builtin",
            output="runs/segment_builtin",
            backbone="ppma_nano",
            iters=500,
            lr=1e-3,
            weight_decay=0.01,
            warmup_iters=30,
            batch_size=4,
            crop_size=128,
            scale=(512, 128),
            channels=64,
            aux_channels=32,
            eval_every=100,
            workers=0,
            threads=2,  # a fixed count: the same numbers on any machine of the same CPU kind
        )


def resolve_data(config: SegmentConfig) -> tuple[Path, list[str]]:
    """(root, class names); builds the built-in set when ``data == "builtin"``."""
    if config.data == "builtin":
        from .examples import build_builtin_segmentation

        root = build_builtin_segmentation(Path(config.output) / "data")
    elif not config.data:
        raise ValueError("data: give an ADE20K- or Cityscapes-layout folder, or 'builtin'")
    else:
        root = Path(config.data)
    if not root.is_dir():
        raise FileNotFoundError(f"data: no folder at {root}")
    names = read_class_names(root)
    k = config.num_classes or (
        len(names) if names else ADE20K_CLASSES if config.layout == "ade20k" else CITYSCAPES_CLASSES
    )
    if names and len(names) != k:
        raise ValueError(f"num_classes: {k} given but {root / 'classes.json'} names {len(names)} classes")
    return root, names or [f"class_{i}" for i in range(k)]


def make_dataset(root: Path, config: SegmentConfig, num_classes: int, train: bool) -> SegmentationSet:
    split = config.train_split if train else config.val_split
    pairs = segmentation_pairs(root, split, config.layout)
    crop = (config.crop_size, config.crop_size)
    return SegmentationSet(
        pairs, num_classes, reduce_zero_label=config.layout == "ade20k", train=train, crop_size=crop, scale=config.scale
    )


# ---- training ----------------------------------------------------------------------------------------------


def segmentation_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], label: torch.Tensor, aux_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy (``IGNORE`` skipped) of the main logits plus ``aux_weight`` times the auxiliary one's."""
    main, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss_main = F.cross_entropy(main.float(), label, ignore_index=IGNORE)
    parts = {"loss_seg": loss_main.item()}
    loss = loss_main
    if aux is not None:
        loss_aux = F.cross_entropy(aux.float(), label, ignore_index=IGNORE)
        parts["loss_aux"] = loss_aux.item()
        loss = loss + aux_weight * loss_aux
    return loss, parts


def train_segmentation(config: SegmentConfig) -> dict[str, Any]:
    """Train UPerNet (one process, or one per GPU under torchrun); returns the last evaluation's scores.

    Writes ``output/last.pth`` (resumable, atomic) at every evaluation, every ``save_every`` iterations
    and at the end, ``output/log.jsonl`` and ``output/config.json``.
    """
    config = config.resolved()
    info = setup_distributed(config.device)
    try:
        if config.batch_size < 2 and not (info.distributed and info.device.type == "cuda"):
            raise ValueError(
                f"batch_size: the heads' BatchNorm (the 1x1 pyramid pooling level) needs at least 2 images "
                f"per step, got {config.batch_size} (1 per GPU works only with SyncBatchNorm: multi-GPU)"
            )
        run, val_set = _set_up(config, info)
        try:
            return _train(run, val_set)
        finally:
            run.folder.close()
    finally:
        cleanup_distributed(info)


def _set_up(config: SegmentConfig, info: DistInfo) -> tuple[DenseRun, SegmentationSet]:
    """Data, model and the shared set-up (``ppma.dense.engine.start_run``); prints the start line."""
    return locked_set_up(config, info, _set_up_in)


def _set_up_in(config: SegmentConfig, info: DistInfo, opened: tuple[Any, Any]) -> tuple[DenseRun, SegmentationSet]:
    Path(config.output).mkdir(parents=True, exist_ok=True)
    with main_process_first(info):  # rank 0 writes the built-in set, if asked for, before the others read it
        root, names = resolve_data(config)
    train_set = make_dataset(root, config, len(names), train=True)
    val_set = make_dataset(root, config, len(names), train=False)
    model = build_upernet(len(names), config.backbone, config.pretrained or None, config.grad_checkpointing,
                          config.drop_path_rate, config.channels, config.aux_channels).to(info.device)  # fmt: skip
    if info.distributed and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # 2 images per GPU: BN over all GPUs, as published
    meta = dict(task="segment", model_name=config.backbone, classes=names)

    def schedule(optimizer: torch.optim.Optimizer, _: int) -> Any:
        return warmup_poly(optimizer, config.warmup_iters, config.warmup_ratio, config.iters, config.power)

    run = start_run(config, info, meta, model, train_set, segmentation_collate, True, schedule, opened=opened)
    run.log.print(
        f"segment: {len(train_set)} train / {len(val_set)} val images, {len(names)} classes, "
        f"{config.iters} iterations, device {info.device}, {info.world_size} process(es)"
    )
    return run, val_set


def _batches(run: DenseRun) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
    """Endless (image, label, position) from where the run stands: the position (epoch and the positions of its
    order trained, ``seen``) after each batch goes into ``last.pth``, so that a run resumed with another
    batch size or process count goes on after the images its epoch has trained."""
    if "epoch" in run.progress:
        epoch, seen = run.progress["epoch"], run.progress["seen"]
    else:  # a fresh run, or a file of an earlier version (iterations only; its batch size and process count)
        epoch, step = divmod(run.progress.get("iteration", 0), len(run.loader))
        seen = step * run.config.batch_size * run.info.world_size
    while True:
        run.sampler.set_epoch(epoch, skip=seen)
        for image, label in run.loader:
            seen += run.config.batch_size * run.info.world_size
            yield image, label, dict(epoch=epoch, seen=seen)
        epoch, seen = epoch + 1, 0


def _train(run: DenseRun, val_set: SegmentationSet) -> dict[str, Any]:
    """Iterate to ``config.iters``: ``last.pth`` at every evaluation and every ``save_every`` iterations."""
    config, info = run.config, run.info
    it = run.progress.get("iteration", 0)
    scores: dict[str, Any] = {}
    run.model.train()
    start = time.time()
    stream = _batches(run)
    with run.bar(None, config.iters, "train", initial=it) as bar:  # a resumed run's bar starts where it stood
        while it < config.iters:
            image, label, position = next(stream)
            image, label = image.to(info.device), label.to(info.device)
            with autocast(info.device, config.amp):
                outputs = run.model(image)
            loss, parts = segmentation_loss(outputs, label, config.aux_weight)
            run.step(loss, it)
            it += 1
            lr = run.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            if it % 20 == 0 or it == 1:
                run.log.write(dict(iteration=it, lr=lr, loss=loss.item(), **parts))
            evaluate_now = it % config.eval_every == 0 or it == config.iters
            if evaluate_now or (config.save_every and it % config.save_every == 0):
                run.save(dict(iteration=it, **position))
            if config.stop_after and it >= config.stop_after:
                return {}  # "killed": what survives is the last checkpoint
            if evaluate_now:
                with rng_untouched(info.device):  # a resumed run must not depend on whether an evaluation ran
                    scores = evaluate_segmentation(unwrap(run.model), val_set, info=info, amp=config.amp,
                                                   progress=show_progress(config))  # fmt: skip
                shown = {k: v for k, v in scores.items() if k in ("mIoU", "mAcc", "aAcc")}
                run.log.write(dict(iteration=it, seconds=round(time.time() - start, 1), **shown))
                run.model.train()
            if it < config.iters:
                run.stop_if_signalled(dict(iteration=it, **position))
    return scores


# ---- inference, evaluation, prediction ----------------------------------------------------------------------


@torch.no_grad()
def infer_logits(
    model: UPerNet,
    image: torch.Tensor,
    scale: tuple[int, int],
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    amp: bool = False,
) -> torch.Tensor:
    """Class probabilities of one image, whole-image inference at each scale (and flipped), averaged.

    Args:
        model: a UPerNet in eval mode.
        image: (3, H, W) normalised image at its original size.
        scale: (long, short) keep-ratio rescale at ratio 1.
        ratios: scale multipliers; ``MS_RATIOS`` for the published multi-scale test.
        flip: also run the horizontally flipped image.

    Returns:
        (K, H, W) averaged softmax probabilities at the original size.
    """
    h, w = image.shape[1:]
    device = next(model.parameters()).device
    total = None
    for r in ratios:
        s = keep_ratio_scale(h, w, (int(scale[0] * r), int(scale[1] * r)))
        x = _resize(image[None].to(device), (max(1, round(h * s)), max(1, round(w * s))))
        for flipped in (False, True) if flip else (False,):
            inp = x.flip(-1) if flipped else x
            with autocast(device, amp):
                logits = model(inp).float()
            logits = logits.flip(-1) if flipped else logits
            prob = _resize(logits, (h, w)).softmax(dim=1)[0]
            total = prob if total is None else total + prob
    return total / (len(ratios) * (2 if flip else 1))


@torch.no_grad()
def evaluate_segmentation(
    model: UPerNet,
    dataset: SegmentationSet,
    multiscale: bool = False,
    flip: bool = False,
    info: DistInfo | None = None,
    amp: bool = False,
    progress: bool | None = False,
) -> dict[str, Any]:
    """mIoU of ``model`` on ``dataset`` (evaluation mode), single-scale or multi-scale (``MS_RATIOS``) with flip.

    Each rank scores its share; the confusion matrices are summed across ranks. ``progress``: a bar over
    rank 0's images (None: when stderr is a terminal).

    Returns:
        ``mIoU``, ``mAcc``, ``aAcc`` (fractions), per-class ``IoU`` / ``Acc`` and the ``confusion`` matrix.
    """
    info = info or DistInfo(device=next(model.parameters()).device)
    if dataset.num_classes != model.num_classes:
        raise ValueError(f"data: {dataset.num_classes} classes but the model predicts {model.num_classes}")
    was_training = model.training
    model.eval()
    cm = torch.zeros(model.num_classes, model.num_classes, dtype=torch.int64)
    ratios = MS_RATIOS if multiscale else (1.0,)
    share = range(info.rank, len(dataset), info.world_size)  # no padding: no image counted twice
    for index in progress_bar(share, len(share), "eval", progress, info.rank):
        pil, label = dataset.read(index)
        prob = infer_logits(model, normalize(to_tensor(pil)), dataset.scale, ratios, flip, amp)
        cm += confusion_matrix(prob.argmax(0).cpu(), label, model.num_classes, IGNORE)
    if info.distributed:
        cm = cm.to(info.device)
        dist.all_reduce(cm)
        cm = cm.cpu()
    model.train(was_training)
    scores = segmentation_scores(cm)
    scores["confusion"] = cm.tolist()
    return scores


def model_from_checkpoint(
    path: str | os.PathLike, device: str = "cpu", weights: bool = True
) -> tuple[UPerNet, dict, dict]:
    """Rebuild a UPerNet from a checkpoint: (model in eval mode, config dict, meta dict).

    ``path`` is a ``last.pth`` of ``ppma segment train``, or a published (MMSegmentation) UPerNet
    checkpoint, whose backbone variant, class count and head widths are read off its weights; its
    config is then the published ADE20K one and its class names the file's ``meta.CLASSES``.
    """
    state = read_checkpoint(path)
    if _is_published_segmentor(state):
        model, config, meta = _from_published_segmentor(path, state, weights)
        return model.to(device).eval(), config, meta
    config, meta = read_run_info(path)
    if meta.get("task") != "segment":
        raise ValueError(f"checkpoint {path}: written by a {meta.get('task')!r} run, not by 'ppma segment train'")
    with initial_weights(config):  # weights=False: the run's first weights, the same on every call
        model = build_upernet(len(meta["class_names"]), config["backbone"], channels=config["channels"],
                              aux_channels=config["aux_channels"])  # fmt: skip
    if weights:  # weights=False: the untrained model of the same configuration (a baseline)
        load_weights(path, model)
    return model.to(device).eval(), config, meta


def _is_published_segmentor(state: dict[str, Any]) -> bool:
    """An MMSegmentation UPerNet checkpoint: ``state_dict`` with ``backbone.*`` and ``decode_head.*`` weights."""
    weights = state.get("state_dict")
    return isinstance(weights, dict) and "decode_head.conv_seg.weight" in weights


def _backbone_variant(weights: dict[str, torch.Tensor]) -> str:
    """The registered PPMA of the backbone ``weights`` (``checkpoint_variant``; the rest is checked on loading)."""
    name = checkpoint_variant(weights)
    if name is None:
        raise ValueError(
            f"backbone: the checkpoint's backbone weights match none of {timm.list_models('ppma_*')} "
            f"({len(weights)} tensors, e.g. {sorted(weights)[:3]})"
        )
    return name


def _from_published_segmentor(path: str | os.PathLike, state: dict[str, Any], load: bool) -> tuple[UPerNet, dict, dict]:
    weights = state["state_dict"]
    backbone = _backbone_variant({k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")})
    num_classes, channels = weights["decode_head.conv_seg.weight"].shape[:2]
    aux = weights.get("auxiliary_head.conv_seg.weight")
    aux_channels = aux.shape[1] if aux is not None else 0
    with initial_weights({}):  # without its weights: the same model on every call
        model = build_upernet(num_classes, backbone, pretrained=path if load else None, channels=channels,
                              aux_channels=aux_channels)  # fmt: skip
    if load:  # the backbone came in through create_backbone; the heads keep MMSegmentation's names
        heads = {k: v for k, v in weights.items() if k.startswith(("decode_head.", "auxiliary_head."))}
        missing, unexpected = model.load_state_dict(heads, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path}: head weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    classes = (state.get("meta") or {}).get("CLASSES")
    names = list(classes) if classes is not None and len(classes) == num_classes else None
    config = asdict(SegmentConfig(backbone=backbone, channels=channels, aux_channels=aux_channels))
    meta = {"task": "segment", "class_names": names or [f"class_{i}" for i in range(num_classes)]}
    return model, config, meta


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours (``palette``); ``IGNORE`` is black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = np.array(palette(num_classes), dtype=np.uint8)
    return table[labels]


def predict_segmentation(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    multiscale: bool = False,
    flip: bool = False,
    device: str = "cpu",
    progress: bool | None = False,
) -> list[dict]:
    """Segment image files (or the images of folders, see ``ppma.dense.data.prediction_inputs``); writes
    ``NAME_labels.png`` (class index per pixel), ``NAME_color.png`` and ``NAME_overlay.png`` (colours blended
    50% over the image) into ``output``, plus ``legend.json``. ``progress``: a bar over the images (None: when
    stderr is a terminal).

    Returns:
        One dict per image: ``file`` and the fraction of pixels per predicted class name (``fractions``), or
        ``file`` and ``error`` for an image that cannot be read (it does not stop the others).
    """
    images = prediction_inputs(images, "NAME_labels.png", output)
    model, config, meta = model_from_checkpoint(checkpoint, device)
    names = meta["class_names"]
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in progress_bar(images, len(images), "predict", progress, 0):
        pil = load_or_record(path, records)
        if pil is None:
            continue
        prob = infer_logits(
            model, normalize(to_tensor(pil)), tuple(config["scale"]), MS_RATIOS if multiscale else (1.0,), flip
        )
        labels = prob.argmax(0).cpu().numpy().astype(np.uint8)
        color = colorize(labels, len(names))
        overlay = (0.5 * np.asarray(pil, dtype=np.float32) + 0.5 * color).astype(np.uint8)
        stem = Path(path).stem
        Image.fromarray(labels).save(out_dir / f"{stem}_labels.png")
        Image.fromarray(color).save(out_dir / f"{stem}_color.png")
        Image.fromarray(overlay).save(out_dir / f"{stem}_overlay.png")
        counts = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
        records.append(
            dict(file=str(path), fractions={names[k]: round(float(c), 4) for k, c in enumerate(counts) if c})
        )
    require_a_readable_image(records)
    legend = {n: list(c) for n, c in zip(names, palette(len(names)), strict=True)}
    atomic_write_text(out_dir / "legend.json", json.dumps(legend, indent=1))
    return records
