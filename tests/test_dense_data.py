"""Dense-task data: COCO / ADE20K / Cityscapes layouts, the built-in sets, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from ppma.dense.data import IGNORE, CocoDetection, SegmentationSet, segmentation_pairs  # noqa: E402
from ppma.dense.examples import SEGMENTATION_CLASSES, build_builtin_segmentation, build_coins_detection  # noqa: E402


def _coco(tmp_path, images=None, annotations=None, categories=None, sizes=((30, 40),)) -> tuple:
    (tmp_path / "img").mkdir(exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.random.randint(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    data = dict(
        images=images
        if images is not None
        else [dict(id=i + 1, file_name=f"{i}.png", height=h, width=w) for i, (h, w) in enumerate(sizes)],
        annotations=annotations
        if annotations is not None
        else [
            dict(
                id=1,
                image_id=1,
                category_id=3,
                bbox=[2, 3, 10, 12],
                iscrowd=0,
                segmentation=[[2, 3, 12, 3, 12, 15, 2, 15]],
            )
        ],
        categories=categories if categories is not None else [dict(id=3, name="thing")],
    )
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return tmp_path / "img", path


def test_coco_item_has_xyxy_boxes_labels_from_one_and_masks(tmp_path):
    img_dir, ann = _coco(tmp_path)
    ds = CocoDetection(img_dir, ann)
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].tolist() == [[2, 3, 12, 15]]
    assert target["labels"].tolist() == [1] and ds.category_ids == [3] and ds.class_names == ["thing"]
    assert target["masks"].shape == (1, 30, 40) and target["masks"][0, 5:14, 3:11].all()


def test_malformed_annotation_json_is_a_one_line_error(tmp_path):
    img_dir, ann = _coco(tmp_path)
    ann.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"not valid JSON .* line 1"):
        CocoDetection(img_dir, ann)
    ann.write_text(json.dumps({"images": [], "categories": [{"id": 1}]}))
    with pytest.raises(ValueError, match="missing or non-list 'annotations'"):
        CocoDetection(img_dir, ann)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            dict(annotations=[dict(image_id=9, category_id=3, bbox=[0, 0, 4, 4])]),
            ValueError,
            "image_id 9, not in 'images'",
        ),
        (dict(annotations=[dict(image_id=1, category_id=5, bbox=[0, 0, 4, 4])]), ValueError, "category_id 5, not in"),
        (
            dict(annotations=[dict(image_id=1, category_id=3, bbox=[0, 0, 4])]),
            ValueError,
            r"bbox must be \[x, y, w, h\]",
        ),
        (
            dict(images=[dict(id=1, file_name="missing.png", height=30, width=40)], annotations=[]),
            FileNotFoundError,
            "1 image.* not in .* e.g. missing.png",
        ),
        (dict(categories=[]), ValueError, "'categories' is empty"),
        (dict(categories=[dict(name="thing")]), ValueError, r"categories\[0\] has no 'id'"),  # was a KeyError
        (dict(categories=[dict(id=3, name="a"), dict(id=3, name="b")]), ValueError, r"categories\[1\] repeats id 3"),
        (
            dict(images=[dict(id=1, file_name="0.png", height=30, width=40)] * 2),
            ValueError,
            r"images\[1\] repeats id 1",
        ),
        (
            dict(annotations=[dict(image_id=1, category_id=3, bbox=[0, float("nan"), 4, 4])]),
            ValueError,
            r"annotations\[0\] bbox must be \[x, y, w, h\] \(finite",
        ),
        (dict(annotations=[dict(image_id=1, category_id=3, bbox=[9, 9, -4, 4])]), ValueError, "w and h >= 0"),
    ],
)
def test_image_annotation_mismatches_are_named(tmp_path, change, error, message):
    img_dir, ann = _coco(tmp_path, **change)
    with pytest.raises(error, match=message):
        CocoDetection(img_dir, ann)


@pytest.mark.parametrize("ids", ["from_zero", "repeated"])
def test_annotation_ids_from_zero_or_repeated_score_like_unique_ones(tmp_path, ids):
    """pycocotools' COCOeval counts a match to annotation id 0 as none, and keeps one of two annotations
    sharing an id: perfect detections scored mAP 0.25. Annotation ids are now renumbered 1..N on reading."""
    from ppma.dense.metrics import coco_evaluate

    rng = np.random.default_rng()
    boxes = [[float(rng.integers(0, 5)) + 20 * k, float(rng.integers(0, 5)), float(rng.integers(8, 14)),
              float(rng.integers(8, 20))] for k in range(2)]  # fmt: skip
    given = [0, 1] if ids == "from_zero" else [5, 5]
    anns = [dict(id=i, image_id=1, category_id=3, bbox=b, iscrowd=0) for i, b in zip(given, boxes, strict=True)]
    img_dir, ann = _coco(tmp_path, annotations=anns)
    ds = CocoDetection(img_dir, ann, with_masks=False)
    perfect = [dict(image_id=1, category_id=3, bbox=b, score=0.9) for b in boxes]
    assert coco_evaluate(ds.coco, perfect, ("bbox",))["bbox_mAP"] == pytest.approx(1.0)


@pytest.mark.parametrize("segmentation", [[[4.0, 5.0]], {"counts": "x"}, [[]]])
def test_undecodable_segmentation_is_a_one_line_error_naming_the_annotation(tmp_path, segmentation):
    """pycocotools raised a bare Exception ('input type is not supported.') from deep inside: a traceback."""
    box = [float(v) for v in np.random.randint(1, 9, 4)]
    anns = [dict(image_id=1, category_id=3, bbox=box, segmentation=[[2, 3, 12, 3, 12, 15]]),
            dict(image_id=1, category_id=3, bbox=box, segmentation=segmentation)]  # fmt: skip
    img_dir, ann = _coco(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"annotations\[1\] segmentation cannot be decoded"):
        CocoDetection(img_dir, ann)[0]


def test_image_size_differing_from_the_json_is_an_error(tmp_path):
    img_dir, ann = _coco(tmp_path, images=[dict(id=1, file_name="0.png", height=31, width=40)])
    with pytest.raises(ValueError, match="file is 40x30 but .* says 40x31"):
        CocoDetection(img_dir, ann)[0]


def test_empty_images_are_skipped_for_training_and_kept_for_evaluation(tmp_path):
    img_dir, ann = _coco(tmp_path, sizes=((30, 40), (20, 20), (25, 25)))  # only image 1 is annotated
    train, val = CocoDetection(img_dir, ann, train=True), CocoDetection(img_dir, ann, train=False)
    assert len(train) == 1 and train.skipped == 2
    assert len(val) == 3
    _, target = val[2]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 25, 25)
    img_dir, ann = _coco(tmp_path, annotations=[])
    with pytest.raises(ValueError, match="no annotated images to use"):
        CocoDetection(img_dir, ann, train=True)


def _ade(tmp_path, n=2, size=(20, 30), max_label=3, extra_image=False):
    for split in ("training",):
        (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
        (tmp_path / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n + extra_image):
            Image.fromarray(np.random.randint(0, 255, (*size, 3), dtype=np.uint8)).save(
                tmp_path / "images" / split / f"{i}.jpg"
            )
            if i < n:
                label = np.random.randint(0, max_label + 1, size).astype(np.uint8)
                Image.fromarray(label).save(tmp_path / "annotations" / split / f"{i}.png")
    return tmp_path


def test_ade20k_labels_shift_down_with_zero_ignored(tmp_path):
    root = _ade(tmp_path, n=1)
    ds = SegmentationSet(segmentation_pairs(root, "train", "ade20k"), 3, reduce_zero_label=True, train=False)
    raw = torch.from_numpy(np.asarray(Image.open(root / "annotations" / "training" / "0.png"), dtype=np.int64))
    _, label = ds.read(0)
    assert torch.equal(label, torch.where(raw == 0, IGNORE, raw - 1))


def test_images_smaller_than_the_crop_are_padded_with_ignored_labels(tmp_path):
    root = _ade(tmp_path, n=1, size=(20, 30))
    ds = SegmentationSet(
        segmentation_pairs(root, "training", "ade20k"),
        3,
        True,
        train=True,
        crop_size=(64, 64),
        scale=(30, 20),
        ratio_range=(1.0, 1.0),
    )
    image, label = ds[0]
    assert image.shape == (3, 64, 64) and label.shape == (64, 64)
    assert (label[20:] == IGNORE).all() and (label[:, 30:] == IGNORE).all()
    assert (image[:, 20:] == 0).all()


def test_segmentation_label_above_the_class_count_is_named(tmp_path):
    root = _ade(tmp_path, n=1, max_label=9)
    ds = SegmentationSet(segmentation_pairs(root, "training", "ade20k"), 3, True, train=False)
    with pytest.raises(ValueError, match=r"0.png: class \d+ found but the dataset has 3 classes"):
        ds.read(0)


def test_segmentation_image_without_label_is_named(tmp_path):
    root = _ade(tmp_path, n=1, extra_image=True)
    with pytest.raises(ValueError, match="1 image.* without a label .* e.g. 1"):
        segmentation_pairs(root, "training", "ade20k")
    with pytest.raises(FileNotFoundError, match="no folder"):
        segmentation_pairs(root, "validation", "ade20k")


def test_cityscapes_layout_pairs_by_city_and_name(tmp_path):
    for sub, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelTrainIds.png")):
        d = tmp_path / sub / "val" / "aachen"
        d.mkdir(parents=True)
        for name in ("aachen_000000_000019", "aachen_000001_000019"):
            mode = "RGB" if sub == "leftImg8bit" else "L"
            Image.new(mode, (16, 8)).save(d / f"{name}{suffix}")
    pairs = segmentation_pairs(tmp_path, "val", "cityscapes")
    assert [p[0].name for p in pairs] == [
        "aachen_000000_000019_leftImg8bit.png",
        "aachen_000001_000019_leftImg8bit.png",
    ]
    assert all(p[1].name.startswith(p[0].name.removesuffix("_leftImg8bit.png")) for p in pairs)


def test_builtin_sets_hold_the_coins_and_page_with_disjoint_splits(tmp_path):
    root = build_coins_detection(tmp_path / "coins")
    train = CocoDetection(root / "train", root / "annotations" / "instances_train.json", train=True)
    val = CocoDetection(root / "val", root / "annotations" / "instances_val.json")
    solid_val = [a for a in val.data["annotations"] if not a["iscrowd"]]
    assert len(solid_val) == 12  # the bottom row's 6 coins, in the strip and its mirror image
    assert len(train) == 16 and train.num_classes == 1
    seg = build_builtin_segmentation(tmp_path / "seg")
    assert json.loads((seg / "classes.json").read_text()) == SEGMENTATION_CLASSES
    ds = SegmentationSet(segmentation_pairs(seg, "validation", "ade20k"), 4, True, train=False)
    seen = set()
    for i in range(len(ds)):
        seen |= set(ds.read(i)[1].unique().tolist())
    assert seen == {0, 1, 2, 3, IGNORE}
