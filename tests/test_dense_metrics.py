"""COCO mAP and segmentation mIoU against hand-computed values on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from ppma.dense.data import coco_from_dict  # noqa: E402
from ppma.dense.metrics import coco_evaluate, confusion_matrix, segmentation_scores  # noqa: E402


def _square_rle(h: int, w: int, x0: int, y0: int, size: int) -> dict:
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), dtype=np.uint8)
    m[y0 : y0 + size, x0 : x0 + size] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _gt(boxes: list[tuple[int, int, int]]) -> object:
    """One 200x200 image with squares (x0, y0, size) of category 1."""
    anns = [
        dict(
            id=i + 1,
            image_id=1,
            category_id=1,
            bbox=[x, y, s, s],
            area=float(s * s),
            iscrowd=0,
            segmentation=_square_rle(200, 200, x, y, s),
        )
        for i, (x, y, s) in enumerate(boxes)
    ]
    return coco_from_dict(
        dict(
            images=[dict(id=1, file_name="a.png", width=200, height=200)],
            annotations=anns,
            categories=[dict(id=1, name="thing")],
        )
    )


def _result(x: int, y: int, s: int, score: float = 0.9) -> dict:
    return dict(image_id=1, category_id=1, score=score, bbox=[x, y, s, s], segmentation=_square_rle(200, 200, x, y, s))


def test_coco_map_of_perfect_predictions_is_one():
    gt = _gt([(10, 10, 100), (120, 130, 50)])
    scores = coco_evaluate(gt, [_result(10, 10, 100, 0.9), _result(120, 130, 50, 0.8)])
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50"):
        assert scores[key] == pytest.approx(1.0)


def test_coco_map_of_shifted_box_counts_only_the_thresholds_its_iou_passes():
    # a 100x100 box shifted by 20 px: IoU = 80*100 / (2*10000 - 8000) = 2/3, which passes the IoU thresholds
    # 0.50, 0.55, 0.60, 0.65 of the ten (0.50:0.05:0.95) with precision 1: mAP = 4/10, AP50 = 1, AP75 = 0
    gt = _gt([(10, 10, 100)])
    scores = coco_evaluate(gt, [_result(30, 10, 100)])
    assert scores["bbox_mAP"] == pytest.approx(0.4)
    assert scores["bbox_mAP_50"] == pytest.approx(1.0)
    assert scores["bbox_mAP_75"] == pytest.approx(0.0)
    assert scores["segm_mAP"] == pytest.approx(0.4)  # the masks are the boxes: same IoU


def test_coco_map_falls_as_boxes_shift_further_and_is_zero_without_results():
    gt = _gt([(10, 10, 100)])
    maps = [coco_evaluate(gt, [_result(10 + d, 10, 100)], ("bbox",))["bbox_mAP"] for d in (0, 10, 20, 40)]
    assert maps[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(maps, maps[1:], strict=False))
    assert coco_evaluate(gt, [])["bbox_mAP"] == 0.0


def test_coco_map_of_one_hit_and_one_false_positive_ranked_first():
    # the false positive scores higher: precision is 1/2 at recall 1 -> AP = 0.5 at every threshold
    gt = _gt([(10, 10, 100)])
    scores = coco_evaluate(gt, [_result(10, 10, 100, 0.5), _result(120, 120, 60, 0.9)], ("bbox",))
    assert scores["bbox_mAP"] == pytest.approx(0.5)


def test_known_confusion_matrix_gives_known_miou():
    # truth 0: 3 right, 1 called 1; truth 1: 2 called 0, 4 right; truth 2: 5 right; 3 ignored pixels
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 255, 255, 255])
    pred = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 1, 2])
    perm = torch.randperm(18)  # pixel order does not matter
    cm = confusion_matrix(pred[perm], target[perm], 3)
    assert cm.tolist() == [[3, 1, 0], [2, 4, 0], [0, 0, 5]]
    s = segmentation_scores(cm)
    iou = [3 / (3 + 1 + 2), 4 / (4 + 2 + 1), 1.0]
    assert s["IoU"] == pytest.approx(iou)
    assert s["mIoU"] == pytest.approx(sum(iou) / 3)
    assert s["aAcc"] == pytest.approx(12 / 15)
    assert s["mAcc"] == pytest.approx((3 / 4 + 4 / 6 + 1) / 3)


def test_miou_of_perfect_prediction_is_one_and_absent_classes_are_left_out():
    target = torch.randint(0, 3, (4, 9, 11))  # classes 0..2 of K = 5: 3 and 4 never appear
    s = segmentation_scores(confusion_matrix(target.clone(), target, 5))
    assert s["mIoU"] == pytest.approx(1.0)
    assert s["aAcc"] == pytest.approx(1.0)
    assert np.isnan(s["IoU"][3]) and np.isnan(s["IoU"][4])


def test_confusion_matrix_matches_a_float64_pixel_loop():
    k = 4
    target = torch.randint(0, k, (3, 7, 5))
    target[torch.rand(target.shape) < 0.2] = 255
    pred = torch.randint(0, k, target.shape)
    ref = np.zeros((k, k), dtype=np.float64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != 255:
            ref[t, p] += 1
    cm = confusion_matrix(pred, target, k)
    assert np.array_equal(cm.numpy(), ref)
    s = segmentation_scores(cm)
    ref_iou = [ref[c, c] / (ref[c].sum() + ref[:, c].sum() - ref[c, c]) for c in range(k)]
    assert s["IoU"] == pytest.approx(ref_iou)


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="target: labels must be in"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 7]), 3)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3)


def test_coco_size_ranges_without_ground_truth_are_nan_not_zero():
    """COCOeval's -1 (no ground truth in a size range) was reported as 0: a set without small objects read
    as a model that finds none. Now NaN (undefined), with or without detections; 0 stays 0 where there are."""
    rng = np.random.default_rng()
    big, medium = int(rng.integers(100, 140)), int(rng.integers(40, 90))  # COCO: large > 96^2, medium 32^2..96^2
    gt = _gt([(int(rng.integers(0, 50)), 5, big), (5, 150 - medium + 40, medium)])
    boxes = [a["bbox"] for a in gt.dataset["annotations"]]
    perfect = [_result(int(b[0]), int(b[1]), int(b[2]), 0.9) for b in boxes]
    for results in (perfect, []):
        scores = coco_evaluate(gt, results)
        for kind in ("bbox", "segm"):
            assert math.isnan(scores[f"{kind}_mAP_s"]) and math.isnan(scores[f"{kind}_AR_s"])
            assert scores[f"{kind}_mAP_l"] == pytest.approx(1.0 if results else 0.0)
            assert scores[f"{kind}_mAP_m"] == pytest.approx(1.0 if results else 0.0)
    empty = coco_from_dict(dict(images=gt.dataset["images"], annotations=[], categories=gt.dataset["categories"]))
    assert all(math.isnan(v) for v in coco_evaluate(empty, perfect, ("bbox",)).values())
