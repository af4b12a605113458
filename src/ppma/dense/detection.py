"""Mask R-CNN with FPN on a PPMA backbone (torchvision), trained and scored like the published 1x / 3x runs.

Published setting (design.md §9, MMDetection 2.x): FPN on all four stages (256 channels, an extra
max-pooled level), images resized to 800 (short) x 1333 (long max), AdamW lr 1e-4, weight decay
0.05, 12 epochs with the lr divided by 10 after epochs 8 and 11, 500 linear warm-up iterations,
16 images per step (2 per GPU on 8 GPUs); 3x: 36 epochs, steps at 27 and 33, short side drawn from
480..800 per image. torchvision's MaskRCNN supplies the RPN, RoI heads and losses; its defaults
(anchors 32..512 over the five levels, 7x7 / 14x14 RoIAlign) match MMDetection's Mask R-CNN config.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..checkpoint import atomic_write_text
from ..images import load_or_record, require_a_readable_image
from ..runtime import (
    DistInfo,
    autocast,
    cleanup_distributed,
    console_line,
    main_process_first,
    progress_bar,
    rng_untouched,
    setup_distributed,
    unwrap,
    warmup_multistep,
)
from ..runtime.config import option, resume_option
from .backbone import create_backbone, parse_stage_flags
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoDetection,
    detection_collate,
    palette,
    prediction_inputs,
    to_tensor,
)
from .engine import (
    DenseRun,
    initial_weights,
    load_weights,
    locked_set_up,
    read_run_info,
    resumed_position,
    show_progress,
    start_run,
)
from .metrics import coco_evaluate

__all__ = [
    "DetectConfig",
    "PPMABackboneWithFPN",
    "build_mask_rcnn",
    "train_detection",
    "evaluate_detection",
    "predict_detection",
    "model_from_checkpoint",
]


@dataclass
class DetectConfig:
    """Mask R-CNN training run; defaults are the published 1x schedule (``schedule="3x"`` for 3x)."""

    data: str = option("", "dataset root, or 'builtin' for the bundled example set")
    train_split: str = "train2017"
    val_split: str = "val2017"
    output: str = "runs/detect"
    backbone: str = "ppma_tiny"
    pretrained: str = option("", "backbone checkpoint (classification or dense; ours or published), or ppma_tiny.in1k")
    schedule: str = "1x"  # "1x": 12 epochs, steps 8, 11; "3x": 36 epochs, steps 27, 33, multi-scale
    epochs: int = 0  # 0: from the schedule
    lr_steps: tuple[int, ...] = ()  # epochs after which lr *= 0.1; () from the schedule
    multiscale: bool | None = None  # None: from the schedule
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    batch_size: int = 2  # per process
    min_size: int = 800
    max_size: int = 1333
    drop_path_rate: float | None = None
    heads: str = "published"  # "published" (FPN 256, box head 1024, 4x256 mask convs) or "light" (CPU examples)
    grad_checkpointing: str = option("none", "per-stage gradient checkpointing: all, none, or stages like 1,2")
    amp: bool = option(False, "bf16 autocast")
    clip_grad: float = 0.0  # 0: none (as published)
    max_iters: int = option(0, "stop after this many iterations (quick runs); 0: the full schedule")
    eval_every: int = 1  # epochs
    save_every: int = 500  # iterations between mid-epoch checkpoints (last.pth); 0: at epoch ends only
    stop_after: int = 0  # stop at once after this many iterations, as if killed (tests of resume); 0: never
    workers: int = 2
    seed: int = 0
    threads: int = option(0, "CPU threads per process (torch.set_num_threads); 0: torch's default. Results "
                             "repeat bit for bit only with the same count")
    device: str = "auto"
    resume: str | None = resume_option()
    quiet: bool = option(False, "no log lines on stdout (log.jsonl still written); no progress bar unless --progress")
    progress: bool | None = option(None, "progress bar; none = only on a terminal, on rank 0")

    def resolved(self) -> DetectConfig:
        """A copy with the schedule's epochs, steps and multi-scale filled in."""
        if self.schedule not in ("1x", "3x"):
            raise ValueError(f"schedule: expected '1x' or '3x', got {self.schedule!r}")
        epochs, steps, ms = (12, (8, 11), False) if self.schedule == "1x" else (36, (27, 33), True)
        out = replace(self)
        out.epochs = self.epochs or epochs
        out.lr_steps = tuple(self.lr_steps) or steps
        out.multiscale = ms if self.multiscale is None else self.multiscale
        if self.threads < 0:
            raise ValueError(f"threads: must be >= 0 (0: torch's default), got {self.threads}")
        if self.heads not in HEADS:
            raise ValueError(f"heads: expected one of {sorted(HEADS)}, got {self.heads!r}")
        parse_stage_flags(out.grad_checkpointing)  # a bad value fails here, before the run folder is made
        return out

    @classmethod
    def builtin_example(cls) -> DetectConfig:
        """The built-in coins run: ppma_nano, light heads, small images, a short schedule (a few CPU minutes)."""
        return cls(
            data="builtin",
            output="runs/detect_coins",
            backbone="ppma_nano",
            heads="light",
            epochs=12,
            lr_steps=(8, 11),
            lr=1e-3,
            warmup_iters=50,
            min_size=256,
            max_size=640,
            workers=0,
            threads=2,  # a fixed count: the same numbers on any machine of the same CPU kind
        )


_SHOWN = ("epoch", "iteration", "seconds", "bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50")  # printed scores

# Head widths: the published Mask R-CNN, and a light one for CPU examples (fewer RoIs and channels).
HEADS: dict[str, dict[str, Any]] = {
    "published": {},
    "light": dict(
        fpn_channels=64,
        box_head_dim=256,
        mask_head_dims=(64, 64),
        box_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
    ),
}


class PPMABackboneWithFPN(nn.Module):
    """PPMA stage maps -> FPN (256 channels) at strides 4, 8, 16, 32, plus a max-pooled level at 64.

    The interface torchvision's detection models expect: ``forward`` returns an OrderedDict
    ``{"0", "1", "2", "3", "pool"}`` of (B, out_channels, H_l, W_l) maps and ``out_channels`` is set.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)  # four (B, C_i, H/2^(i+2), W/2^(i+2)) maps
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_mask_rcnn(
    num_classes: int,
    backbone: str = "ppma_tiny",
    pretrained: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    multiscale: bool = False,
    grad_checkpointing: bool | str | list[bool] | None = None,
    drop_path_rate: float | None = None,
    fpn_channels: int = 256,
    box_head_dim: int = 1024,
    mask_head_dims: tuple[int, ...] = (256, 256, 256, 256),
    **kwargs: Any,
) -> MaskRCNN:
    """torchvision Mask R-CNN on a PPMA + FPN backbone.

    Args:
        num_classes: object classes, without background (torchvision's count is ``num_classes + 1``).
        backbone: PPMA variant name.
        pretrained: backbone checkpoint (see ``ppma.dense.backbone.create_backbone``).
        min_size, max_size: resize so the short side is ``min_size`` and the long side at most ``max_size``.
        multiscale: training short side drawn per image from 480..min_size in steps of 32 (the 3x
            recipe); evaluation uses ``min_size``.
        grad_checkpointing: per-stage gradient checkpointing of the backbone.
        drop_path_rate: backbone stochastic depth (variant default when None).
        fpn_channels, box_head_dim, mask_head_dims: head widths; the defaults are the published
            (and torchvision's) Mask R-CNN; smaller ones make CPU examples fast.
        **kwargs: passed to ``torchvision.models.detection.MaskRCNN`` (thresholds, detections per image, ...).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: expected at least 1 object class, got {num_classes}")
    body = create_backbone(backbone, pretrained, grad_checkpointing, drop_path_rate)
    return MaskRCNN(
        num_classes=None,
        min_size=_short_sides(min_size, multiscale),
        max_size=max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        **_fpn_and_roi_heads(body, num_classes, fpn_channels, box_head_dim, mask_head_dims),
        **kwargs,
    )


def _short_sides(min_size: int, multiscale: bool) -> int | tuple[int, ...]:
    """The short side(s) images are resized to: ``min_size``, or (multi-scale) 480..min_size in steps of 32,
    one drawn per training image, ending at ``min_size`` (the last one is torchvision's evaluation size)."""
    if not multiscale:
        return min_size
    sizes = tuple(range(min(480, min_size), min_size + 1, 32))
    return sizes if sizes[-1] == min_size else (*sizes, min_size)


def _fpn_and_roi_heads(
    body: nn.Module, num_classes: int, fpn_channels: int, box_head_dim: int, mask_head_dims: tuple[int, ...]
) -> dict[str, nn.Module]:
    """The trained parts around the backbone body, as ``MaskRCNN`` keywords: the FPN, the box head and
    predictor (7x7 RoIAlign features), the mask head and predictor (14x14), ``num_classes`` + background."""
    # Each module draws its initial weights from the global generator: this order is what a seed's
    # weights depend on (checkpoints and runs that repeat bit for bit), so keep it.
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_dim)
    mask_head = MaskRCNNHeads(fpn_channels, list(mask_head_dims), dilation=1)
    backbone = PPMABackboneWithFPN(body, fpn_channels)
    box_predictor = FastRCNNPredictor(box_head_dim, num_classes + 1)
    mask_predictor = MaskRCNNPredictor(mask_head_dims[-1], mask_head_dims[-1], num_classes + 1)
    return dict(backbone=backbone, box_head=box_head, box_predictor=box_predictor, mask_head=mask_head,
                mask_predictor=mask_predictor)  # fmt: skip


# ---- data -------------------------------------------------------------------------------------------------


def resolve_data(config: DetectConfig) -> tuple[Path, str, str]:
    """(root, train split, val split); builds the built-in coins set when ``data == "builtin"``."""
    if config.data == "builtin":
        from .examples import build_coins_detection

        root = build_coins_detection(Path(config.output) / "data")
        return root, "train", "val"
    if not config.data:
        raise ValueError("data: give a COCO-format folder (annotations/instances_SPLIT.json + SPLIT/) or 'builtin'")
    return Path(config.data), config.train_split, config.val_split


def coco_split(root: str | os.PathLike, split: str, train: bool) -> CocoDetection:
    """The COCO layout: ``root/annotations/instances_{split}.json`` with images in ``root/{split}/``."""
    root = Path(root)
    return CocoDetection(root / split, root / "annotations" / f"instances_{split}.json", train=train)


# ---- training ---------------------------------------------------------------------------------------------


def train_detection(config: DetectConfig) -> dict[str, float]:
    """Train Mask R-CNN (one process, or one per GPU under torchrun); returns the last evaluation's scores.

    Writes ``output/last.pth`` (resumable, atomic, mid-epoch included) after each epoch and every
    ``save_every`` iterations, ``output/log.jsonl`` and ``output/config.json``.
    """
    config = config.resolved()
    info = setup_distributed(config.device)
    run = None
    try:
        run, val_set = _set_up(config, info)
        scores: dict[str, float] = {}
        it = run.progress.get("iteration", 0)
        for epoch in range(run.progress.get("epoch", 0), config.epochs):
            if config.max_iters and it >= config.max_iters:  # resumed from the end of a shortened run
                break
            start = time.time()
            it, finished = _train_epoch(run, epoch, it)
            if finished is None:
                return {}  # "killed" (stop_after): what survives is the last checkpoint
            done = bool(config.max_iters) and it >= config.max_iters
            if done or (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                scores = _evaluate(run, val_set, epoch + 1, it, start)
            if done:
                break
        return scores
    finally:
        if run is not None:
            run.folder.close()
        cleanup_distributed(info)


def _set_up(config: DetectConfig, info: DistInfo) -> tuple[DenseRun, CocoDetection]:
    """Data, model and the shared set-up (``ppma.dense.engine.start_run``); prints the start line."""
    return locked_set_up(config, info, _set_up_in)


def _set_up_in(config: DetectConfig, info: DistInfo, opened: tuple[Any, Any]) -> tuple[DenseRun, CocoDetection]:
    Path(config.output).mkdir(parents=True, exist_ok=True)
    with main_process_first(info):  # rank 0 writes the built-in set, if asked for, before the others read it
        root, train_split, val_split = resolve_data(config)
    train_set = coco_split(root, train_split, train=True)
    val_set = coco_split(root, val_split, train=False)
    if val_set.category_ids != train_set.category_ids:
        raise ValueError(f"data: train and val categories differ ({train_set.category_ids} vs {val_set.category_ids})")
    model = build_mask_rcnn(train_set.num_classes, config.backbone, config.pretrained or None, config.min_size,
                            config.max_size, bool(config.multiscale), config.grad_checkpointing,
                            config.drop_path_rate, **HEADS[config.heads]).to(info.device)  # fmt: skip
    meta = dict(task="detect", model_name=config.backbone, classes=train_set.class_names,
                category_ids=train_set.category_ids)  # fmt: skip

    def schedule(optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> Any:
        milestones = [s * iters_per_epoch for s in config.lr_steps]
        return warmup_multistep(optimizer, config.warmup_iters, config.warmup_ratio, milestones)

    run = start_run(config, info, meta, model, train_set, detection_collate, False, schedule, opened=opened)
    run.log.print(
        f"detect: {len(train_set)} train images ({train_set.skipped} without annotations skipped), "
        f"{len(val_set)} val images, {train_set.num_classes} classes, {config.epochs} epochs "
        f"x {len(run.loader)} iterations, device {info.device}, {info.world_size} process(es)"
    )
    return run, val_set


def _train_epoch(run: DenseRun, epoch: int, it: int) -> tuple[int, bool | None]:
    """The (rest of the) epoch; returns (iteration, whether the epoch ended), None for a simulated kill.

    ``last.pth`` is written every ``save_every`` iterations, at the end of the epoch and where
    ``max_iters`` cuts it short.
    """
    config, info = run.config, run.info
    step, seen = resumed_position(run.progress, epoch)
    run.sampler.set_epoch(epoch, skip=seen)  # after the images the epoch has trained, whatever the batch was
    left = len(run.loader)
    run.model.train()
    # A resumed epoch's bar starts at the steps it had trained (those of the saved batch size).
    with run.bar(run.loader, step + left, f"epoch {epoch + 1}/{config.epochs}", initial=step) as bar:
        for images, targets in bar:
            images = [im.to(info.device) for im in images]
            targets = [{k: v.to(info.device) for k, v in t.items()} for t in targets]
            with autocast(info.device, config.amp):
                losses = run.model(images, targets)
            loss = sum(losses.values())
            run.step(loss, it)
            it, step, seen, left = it + 1, step + 1, seen + config.batch_size * info.world_size, left - 1
            lr = run.scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            if it % 20 == 0 or it == 1:
                parts = {k: v.item() for k, v in losses.items()}
                run.log.write(dict(epoch=epoch, iteration=it, lr=lr, loss=loss.item(), **parts))
            done = bool(config.max_iters) and it >= config.max_iters
            progress = dict(epoch=epoch, iteration=it, step_in_epoch=step, seen=seen)
            if left and (done or (config.save_every and it % config.save_every == 0)):
                run.save(progress)
            if config.stop_after and it >= config.stop_after:
                return it, None
            if done:
                break
            if left:  # at the epoch's end the run saves and evaluates first
                run.stop_if_signalled(progress)
    if not left:
        run.save(dict(epoch=epoch + 1, iteration=it, step_in_epoch=0, seen=0))
    return it, not left


def _evaluate(run: DenseRun, val_set: CocoDetection, epoch: int, it: int, start: float) -> dict[str, float]:
    """Score the model on ``val_set`` and log it; the random states are left as they were."""
    with rng_untouched(run.info.device):  # a resumed run must not depend on whether an evaluation ran
        scores = evaluate_detection(unwrap(run.model), val_set, run.info, run.config.amp,
                                    progress=show_progress(run.config))  # fmt: skip
    record = dict(epoch=epoch, iteration=it, seconds=round(time.time() - start, 1), **scores)
    run.log.write(record, console_line(record, _SHOWN))
    return scores


# ---- evaluation and prediction ------------------------------------------------------------------------------


def _to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int]) -> list[dict]:
    """One image's torchvision detections as COCO result dicts (xywh boxes, RLE masks at 0.5)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].float().cpu().numpy()
    scores = output["scores"].float().cpu().numpy()
    labels = output["labels"].cpu().numpy()
    masks = (output["masks"][:, 0] > 0.5).cpu().numpy() if "masks" in output else None
    results = []
    for i in range(len(boxes)):
        x0, y0, x1, y1 = boxes[i].tolist()
        r = dict(
            image_id=int(image_id),
            category_id=int(category_ids[labels[i] - 1]),
            score=float(scores[i]),
            bbox=[x0, y0, x1 - x0, y1 - y0],
        )
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str: JSON-able
            r["segmentation"] = rle
        results.append(r)
    return results


@torch.no_grad()
def evaluate_detection(
    model: MaskRCNN,
    dataset: CocoDetection,
    info: DistInfo | None = None,
    amp: bool = False,
    batch_size: int = 1,
    progress: bool | None = False,
) -> dict[str, float]:
    """COCO box and mask mAP of ``model`` on ``dataset`` (each rank scores its share; rank 0 gathers).
    ``progress``: a bar over rank 0's images (None: when stderr is a terminal).

    Returns:
        ``bbox_mAP``, ``bbox_mAP_50``, ..., ``segm_mAP``, ... (fractions; see ``ppma.dense.metrics``).
    """
    info = info or DistInfo(device=next(model.parameters()).device)
    if len(dataset.category_ids) != model.roi_heads.box_predictor.cls_score.out_features - 1:
        raise ValueError(
            f"data: {len(dataset.category_ids)} categories but the model predicts "
            f"{model.roi_heads.box_predictor.cls_score.out_features - 1} classes"
        )
    was_training = model.training
    model.eval()
    share = Subset(dataset, range(info.rank, len(dataset), info.world_size))  # no padding: no duplicate images
    loader = DataLoader(share, batch_size, collate_fn=detection_collate)
    results: list[dict] = []
    for images, targets in progress_bar(loader, len(loader), "eval", progress, info.rank):
        with autocast(info.device, amp):
            outputs = model([im.to(info.device) for im in images])
        for out, t in zip(outputs, targets, strict=True):
            results += _to_coco_results(out, int(t["image_id"]), dataset.category_ids)
    if info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    model.train(was_training)
    return coco_evaluate(dataset.coco, results, ("bbox", "segm"))


def model_from_checkpoint(
    path: str | os.PathLike, device: str = "cpu", weights: bool = True
) -> tuple[MaskRCNN, dict, dict]:
    """Rebuild a trained Mask R-CNN from its ``last.pth``: (model in eval mode, config dict, meta dict)."""
    config, meta = read_run_info(path)
    if meta.get("task") != "detect":
        raise ValueError(f"checkpoint {path}: written by a {meta.get('task')!r} run, not by 'ppma detect train'")
    with initial_weights(config):  # weights=False: the run's first weights, the same on every call
        model = build_mask_rcnn(
            len(meta["class_names"]),
            config["backbone"],
            None,
            config["min_size"],
            config["max_size"],
            **HEADS[config.get("heads", "published")],
        )
    if weights:  # weights=False: the untrained model of the same configuration (a baseline)
        load_weights(path, model)
    return model.to(device).eval(), config, meta


def predict_detection(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    output: str | os.PathLike,
    score_threshold: float = 0.5,
    device: str = "cpu",
    progress: bool | None = False,
) -> list[dict]:
    """Detect objects in image files (or the images of folders, see ``ppma.dense.data.prediction_inputs``) and
    draw boxes, labels and masks on them (``output/NAME_pred.png``); ``progress``: a bar over the images
    (None: when stderr is a terminal).

    Returns:
        One dict per image: ``file``, ``drawn``, ``boxes`` [[x0, y0, x1, y1], ...], ``labels`` (class names),
        ``scores``; or ``file`` and ``error`` for an image that cannot be read (it does not stop the others).
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    images = prediction_inputs(images, "NAME_pred.png", output)
    model, _, meta = model_from_checkpoint(checkpoint, device)
    names = meta["class_names"]
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    colors = palette(len(names))
    for path in progress_bar(images, len(images), "predict", progress, 0):
        pil = load_or_record(path, records)
        if pil is None:
            continue
        image = to_tensor(pil)
        with torch.no_grad():
            det = model([image.to(device)])[0]
        keep = det["scores"] >= score_threshold
        boxes, labels, scores = det["boxes"][keep].cpu(), det["labels"][keep].cpu(), det["scores"][keep].cpu()
        canvas = (image * 255).to(torch.uint8)
        if keep.any():
            masks = det["masks"][keep][:, 0].cpu() > 0.5
            cols = [colors[int(lab) - 1] for lab in labels]
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=cols)
            text = [f"{names[int(lab) - 1]} {s:.2f}" for lab, s in zip(labels, scores, strict=True)]
            canvas = draw_bounding_boxes(canvas, boxes, labels=text, colors=cols, width=2)
        dst = out_dir / f"{Path(path).stem}_pred.png"
        Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(dst)  # CHW -> HWC
        records.append(
            dict(
                file=str(path),
                drawn=str(dst),
                boxes=boxes.tolist(),
                labels=[names[int(lab) - 1] for lab in labels],
                scores=scores.tolist(),
            )
        )
    require_a_readable_image(records)
    atomic_write_text(out_dir / "predictions.json", json.dumps(records, indent=1))
    return records
