"""Dense-task metrics: COCO box/mask mAP (pycocotools) and segmentation mIoU from a confusion matrix.

All scores are fractions in [0, 1] (the CLI prints them as percentages, as the paper does).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

__all__ = ["COCO_STAT_NAMES", "coco_evaluate", "confusion_matrix", "segmentation_scores"]

# The 12 numbers COCOeval.summarize() prints, in its order.
COCO_STAT_NAMES = (
    "mAP",
    "mAP_50",
    "mAP_75",
    "mAP_s",
    "mAP_m",
    "mAP_l",
    "AR_1",
    "AR_10",
    "AR_100",
    "AR_s",
    "AR_m",
    "AR_l",
)


def coco_evaluate(coco_gt: Any, results: list[dict], iou_types: tuple[str, ...] = ("bbox", "segm")) -> dict[str, float]:
    """COCO mAP of detection results against ground truth.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` holding the ground truth.
        results: COCO result dicts: ``image_id``, ``category_id``, ``score`` and ``bbox`` [x, y, w, h]
            (for ``"bbox"``) or ``segmentation`` as RLE (for ``"segm"``).
        iou_types: which of ``"bbox"``, ``"segm"`` to score.

    Returns:
        ``{"bbox_mAP": ..., "bbox_mAP_50": ..., "segm_mAP": ..., ...}`` (names in ``COCO_STAT_NAMES``);
        NaN where there is no ground truth to score (no small objects: ``mAP_s``; none at all: every score),
        as for a class absent from a segmentation set; 0 where there is some and nothing was detected.
    """
    from pycocotools.cocoeval import COCOeval

    from .data import coco_from_dict

    scores: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_types: expected 'bbox' or 'segm', got {iou_type!r}")
        usable = [r for r in results if ("bbox" if iou_type == "bbox" else "segmentation") in r]
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables; we return numbers
            if usable:
                coco_dt = coco_gt.loadRes(usable)
            else:  # loadRes refuses an empty list; no detections score 0 (or NaN without ground truth)
                coco_dt = coco_from_dict(dict(images=coco_gt.dataset["images"], annotations=[],
                                              categories=coco_gt.dataset["categories"]))  # fmt: skip
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # -1 is COCOeval's "no ground truth in this size range": undefined, not 0 (it read as a model
        # that finds no small objects in a set that has none)
        scores.update({f"{iou_type}_{n}": float("nan") if s < 0 else float(s)
                       for n, s in zip(COCO_STAT_NAMES, ev.stats, strict=True)})  # fmt: skip
    return scores


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Pixel confusion matrix, rows = true class, columns = predicted class.

    Args:
        pred: (...) predicted class per pixel, in [0, num_classes).
        target: (...) true class per pixel, same shape; ``ignore_index`` pixels are not counted.
        num_classes: K.
        ignore_index: label of pixels to skip.

    Returns:
        (K, K) int64 counts.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target: labels must be in [0, {num_classes}) or {ignore_index}, got {t.min()}..{t.max()}")
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred: classes must be in [0, {num_classes}), got {p.min()}..{p.max()}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def segmentation_scores(cm: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """mIoU, mean class accuracy and overall pixel accuracy from a (K, K) confusion matrix (rows = truth).

    IoU_c = TP / (TP + FP + FN). A class absent from both truth and prediction has no IoU (NaN) and
    is left out of the mean, as MMSegmentation does; a class that is predicted but never true gets IoU 0.

    Returns:
        ``mIoU``, ``mAcc``, ``aAcc`` (floats) and ``IoU``, ``Acc`` (per-class lists, NaN where undefined).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    true_count, pred_count = cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        union = true_count + pred_count - tp
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(true_count > 0, tp / true_count, np.nan)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
        "aAcc": float(tp.sum() / total) if total > 0 else 0.0,
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }
