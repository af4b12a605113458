"""Dense-task data: COCO-format detection sets, ADE20K- and Cityscapes-layout segmentation sets.

Every check names the file and what is wrong, in one line (``ValueError`` / ``FileNotFoundError``).
Documented handling, nothing silent:

- detection, training: images without usable annotations are skipped (MMDetection's ``filter_empty_gt``),
  crowd annotations (``iscrowd=1``) and boxes under 1 pixel are left out of the targets; the count of
  skipped images is in ``CocoDetection.skipped``. Evaluation keeps every image (pycocotools handles crowds).
  Annotation ids are renumbered 1..N (``read_coco_json``: pycocotools mis-scores id 0 and repeated ids).
- segmentation: images smaller than the crop are padded (image 0, label ``IGNORE``) up to the crop size,
  as MMSegmentation does; a label above the class count raises an error naming the file.

The built-in example sets (``ppma.dense.examples``) use these same layouts.
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .. import images as image_files
from ..train.data import seeded_item

__all__ = [
    "IGNORE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "SegmentationSet",
    "segmentation_pairs",
    "read_class_names",
    "detection_collate",
    "segmentation_collate",
    "load_rgb",
    "normalize",
    "to_tensor",
    "palette",
    "prediction_inputs",
]

IGNORE = 255  # label of pixels that count for neither loss nor metric
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as 8-bit RGB, decoded by ``ppma.images.load_rgb`` (16-bit and [0, 1] float images
    scaled, bombs and damaged files refused in one line); a missing file is a ``FileNotFoundError``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image: no file at {path}")
    return image_files.load_rgb(path)


def prediction_inputs(images: Sequence[str | os.PathLike], outputs: str, output: str | os.PathLike) -> list[Path]:
    """The image files ``predict`` reads: files as given, a folder as its images at any depth (sorted,
    hidden files left out, as ``ppma predict``). Each writes files named after its stem (``outputs``,
    e.g. ``NAME_pred.png``), so two inputs with one stem (``a/x.png``, ``b/x.jpg``) are refused: the second
    overwrote the first's drawings and its entry in the JSON pointed at them. ``output``, the folder they
    go to, must not be a file (that was a ``FileExistsError`` traceback from ``mkdir``)."""
    if Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"output: {output} is a file, not a folder for the predictions")
    files: list[Path] = []
    for item in images:
        if not Path(item).is_dir():
            files.append(Path(item))
            continue
        found, _ = image_files.image_files(item)
        if not found:
            kinds = " ".join(image_files.IMAGE_EXTENSIONS)
            raise FileNotFoundError(f"images: no image files ({kinds}) in the folder {item}")
        files += [Path(f) for f in found]
    if not files:
        raise ValueError("images: none given")
    first: dict[str, Path] = {}
    for f in files:
        other = first.setdefault(f.stem, f)
        if other != f:
            raise ValueError(
                f"images: {other} and {f} would both write {outputs.replace('NAME', f.stem)}; "
                f"predict them into separate --output folders"
            )
    return files


def _visible(path: Path, below: Path) -> bool:
    """No hidden file or folder (``.thumbs/``, ``.DS_Store``) on the way from ``below`` to ``path``."""
    return not any(image_files.is_hidden(part) for part in path.relative_to(below).parts)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> ImageNet-normalised (3, H, W)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0  # HWC -> CHW


# ---- detection: COCO format ------------------------------------------------------------------------------


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an instances JSON: top-level lists, known image/category ids, well-formed boxes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations: no file at {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"annotations {path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"annotations {path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"annotations {path}: missing or non-list '{key}' (COCO instances format)")
    if not data["categories"]:
        raise ValueError(f"annotations {path}: 'categories' is empty")
    for i, im in enumerate(data["images"]):
        if not {"id", "file_name", "width", "height"} <= set(im):
            raise ValueError(f"annotations {path}: images[{i}] lacks one of id, file_name, width, height")
    for i, cat in enumerate(data["categories"]):
        if "id" not in cat:
            raise ValueError(f"annotations {path}: categories[{i}] has no 'id'")
    for key in ("images", "categories"):  # pycocotools keeps the last of two entries with one id, silently
        seen: set = set()
        for i, entry in enumerate(data[key]):
            if entry["id"] in seen:
                raise ValueError(f"annotations {path}: {key}[{i}] repeats id {entry['id']}")
            seen.add(entry["id"])
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if not {"image_id", "category_id", "bbox"} <= set(ann):
            raise ValueError(f"annotations {path}: annotations[{i}] lacks one of image_id, category_id, bbox")
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"annotations {path}: annotations[{i}] refers to image_id {ann['image_id']}, not in 'images'"
            )
        if ann["category_id"] not in cat_ids:
            raise ValueError(
                f"annotations {path}: annotations[{i}] has category_id {ann['category_id']}, "
                f"not in 'categories' {sorted(cat_ids)}"
            )
        box = ann["bbox"]
        numbers = isinstance(box, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        if not (numbers and len(box) == 4 and all(math.isfinite(v) for v in box) and min(box[2:]) >= 0):
            raise ValueError(
                f"annotations {path}: annotations[{i}] bbox must be [x, y, w, h] (finite, w and h >= 0), got {box!r}"
            )
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(box[2] * box[3]))
        # Renumbered 1..N: pycocotools' COCOeval counts a match to annotation id 0 as no match, and keeps one
        # of two annotations sharing an id; both lowered mAP silently (ids 0.. are common in converted sets).
        ann["id"] = i + 1
    return data


def coco_from_dict(data: dict[str, Any]) -> Any:
    """A ``pycocotools.coco.COCO`` built from an in-memory dict (quietly)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class EpochSeeded(Dataset):
    """A training set whose random augmentation of item i is drawn from a seed of (seed, epoch, i), so a
    run resumed mid-epoch (``ResumableSampler`` calls ``set_epoch``) sees the crops and flips it would have."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class CocoDetection(EpochSeeded):
    """COCO instances (images + JSON) as torchvision detection targets.

    Args:
        image_dir: folder holding the ``file_name`` of every image.
        ann_file: instances JSON.
        train: training mode: skip images without usable annotations, random horizontal flip.
        with_masks: build instance masks (Mask R-CNN); needs ``segmentation`` in every used annotation.

    Items are ``(image, target)``: image (3, H, W) float in [0, 1]; target with ``boxes`` (N, 4) xyxy
    float, ``labels`` (N,) int64 in 1..K (0 is torchvision's background), ``masks`` (N, H, W) uint8 and
    ``image_id``. ``category_ids[label - 1]`` gives the COCO category id back.
    """

    def __init__(
        self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, train: bool = False, with_masks: bool = True
    ) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"images: no folder at {self.image_dir}")
        self.ann_file = Path(ann_file)
        self.data = read_coco_json(ann_file)
        self.coco = coco_from_dict(self.data)
        self.train, self.with_masks = train, with_masks
        self.category_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.category_ids]
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        missing = [im["file_name"] for im in self.data["images"] if not (self.image_dir / im["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"images: {len(missing)} image(s) listed in {self.ann_file} are not in "
                f"{self.image_dir}, e.g. {missing[0]}"
            )
        ids = sorted(self.coco.imgs)
        if train:
            usable = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns.get(i, []))]
            self.skipped = len(ids) - len(usable)
            ids = usable
        else:
            self.skipped = 0
        if not ids:
            raise ValueError(f"annotations {self.ann_file}: no {'annotated ' if train else ''}images to use")
        self.ids = ids

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def _usable(self, ann: dict) -> bool:
        return not ann.get("iscrowd", 0) and ann["bbox"][2] >= 1 and ann["bbox"][3] >= 1

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, ann: dict) -> np.ndarray:
        """The annotation's (H, W) uint8 mask; pycocotools raises a bare ``Exception`` (no file, no entry) for
        what it cannot decode (a polygon of under 3 points, a malformed RLE)."""
        try:
            return self.coco.annToMask(ann)
        except Exception as e:  # pycocotools raises plain Exceptions
            raise ValueError(
                f"annotations {self.ann_file}: annotations[{ann['id'] - 1}] segmentation cannot be decoded "
                f"({str(e).strip() or type(e).__name__}; expected polygons [[x1, y1, x2, y2, x3, y3, ...]] or an RLE)"
            ) from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        pil = load_rgb(self.image_dir / info["file_name"])
        if (pil.height, pil.width) != (info["height"], info["width"]):
            raise ValueError(
                f"image {info['file_name']}: file is {pil.width}x{pil.height} but {self.ann_file} says "
                f"{info['width']}x{info['height']}"
            )
        image = to_tensor(pil)
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, pil.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, pil.height)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }
        if self.with_masks:
            for a in anns:
                if "segmentation" not in a:
                    raise ValueError(
                        f"annotations {self.ann_file}: annotations[{a['id'] - 1}] has no 'segmentation' "
                        f"(Mask R-CNN needs instance masks)"
                    )
            masks = np.stack([self._mask(a) for a in anns]) if anns else np.zeros((0, pil.height, pil.width))
            target["masks"] = torch.from_numpy(masks.astype(np.uint8))
        with seeded_item(self.seed, self.epoch, index):
            flip = self.train and random.random() < 0.5
        if flip:  # horizontal flip
            image = image.flip(-1)
            target["boxes"][:, [0, 2]] = pil.width - target["boxes"][:, [2, 0]]
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def detection_collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """Images of different sizes stay a list (torchvision's detection models batch them)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


# ---- segmentation: ADE20K and Cityscapes layouts ---------------------------------------------------------

ADE20K_CLASSES = 150
CITYSCAPES_CLASSES = 19


def read_class_names(root: str | os.PathLike) -> list[str] | None:
    """``classes.json`` (a list of names) beside the data, if present."""
    path = Path(root) / "classes.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"classes {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"classes {path}: expected a non-empty JSON list of class names")
    return names


def segmentation_pairs(root: str | os.PathLike, split: str, layout: str) -> list[tuple[Path, Path]]:
    """(image, label) file pairs of one split.

    Layouts:
        ``ade20k``: ``images/{split}/X.jpg`` with ``annotations/{split}/X.png`` (split ``training`` /
        ``validation``; ``train`` / ``val`` are accepted as aliases).
        ``cityscapes``: ``leftImg8bit/{split}/CITY/X_leftImg8bit.png`` with
        ``gtFine/{split}/CITY/X_gtFine_labelTrainIds.png`` (split ``train`` / ``val``).

    Raises:
        FileNotFoundError: a missing folder; ValueError: no images, or images and labels that do not pair up.
    """
    root = Path(root)
    if layout == "ade20k":
        split = {"train": "training", "val": "validation"}.get(split, split)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{layout} data: no folder {d}")
        found = {p.stem: p for p in img_dir.iterdir() if image_files.is_image_file(p.name)}
        labels = {p.stem: p for p in ann_dir.iterdir()
                  if p.suffix.lower() == ".png" and not image_files.is_hidden(p.name)}  # fmt: skip
    elif layout == "cityscapes":
        split = {"training": "train", "validation": "val"}.get(split, split)
        img_dir, ann_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{layout} data: no folder {d}")
        found = {
            str(p.relative_to(img_dir)).removesuffix("_leftImg8bit.png"): p
            for p in img_dir.glob("*/*_leftImg8bit.png") if _visible(p, img_dir)
        }  # fmt: skip
        labels = {
            str(p.relative_to(ann_dir)).removesuffix("_gtFine_labelTrainIds.png"): p
            for p in ann_dir.glob("*/*_gtFine_labelTrainIds.png") if _visible(p, ann_dir)
        }  # fmt: skip
    else:
        raise ValueError(f"layout: expected 'ade20k' or 'cityscapes', got {layout!r}")
    if not found:
        raise ValueError(f"{layout} data: no images in {img_dir}")
    lonely_images, lonely_labels = sorted(set(found) - set(labels)), sorted(set(labels) - set(found))
    if lonely_images or lonely_labels:
        what = lonely_images[0] if lonely_images else lonely_labels[0]
        raise ValueError(
            f"{layout} data: {len(lonely_images)} image(s) without a label and {len(lonely_labels)} "
            f"label(s) without an image in {root} (split {split}), e.g. {what}"
        )
    return [(found[k], labels[k]) for k in sorted(found)]


def keep_ratio_scale(h: int, w: int, scale: tuple[int, int]) -> float:
    """MMSegmentation's keep-ratio rescale factor: fit (h, w) inside (long, short) = ``scale``."""
    long_edge, short_edge = max(scale), min(scale)
    return min(long_edge / max(h, w), short_edge / min(h, w))


class SegmentationSet(EpochSeeded):
    """Semantic segmentation pairs with the published ADE20K pipeline.

    Training: random rescale (ratio 0.5-2.0 of ``scale``, keep ratio), random ``crop_size`` crop
    where no single class covers more than 75% (up to 10 tries), horizontal flip, normalise, pad to
    the crop (image 0, label ``IGNORE``). Evaluation: the whole image, rescaled to fit ``scale``; the
    label stays at its original size (predictions are resized back to it).

    Args:
        pairs: (image, label) paths from ``segmentation_pairs``.
        num_classes: K; labels are 0..K-1 after mapping, ``IGNORE`` is skipped.
        reduce_zero_label: ADE20K convention: file label 0 is "other" (ignored), 1..K become 0..K-1.
        train: training pipeline (above) or evaluation.
        crop_size: (h, w) training crop.
        scale: (long, short) edge sizes of the keep-ratio rescale (published ADE20K: 2048x512).
        ratio_range: training rescale ratios.

    Items: ``(image (3, h, w) float normalised, label (H, W) int64)``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        reduce_zero_label: bool,
        train: bool,
        crop_size: tuple[int, int] = (512, 512),
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        if not pairs:
            raise ValueError("segmentation data: no (image, label) pairs")
        if num_classes < 1 or num_classes >= IGNORE:
            raise ValueError(f"num_classes: expected 1..{IGNORE - 1}, got {num_classes}")
        self.pairs, self.num_classes, self.reduce_zero_label = list(pairs), num_classes, reduce_zero_label
        self.train, self.crop_size, self.scale, self.ratio_range = train, tuple(crop_size), tuple(scale), ratio_range

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[Image.Image, torch.Tensor]:
        """The image (PIL RGB) and its mapped label (H, W) int64, checked against each other and K."""
        img_path, ann_path = self.pairs[index]
        image = load_rgb(img_path)
        try:
            with Image.open(ann_path) as im:
                label = np.asarray(im, dtype=np.int64)
        except OSError as e:
            raise ValueError(f"label: cannot read {ann_path} ({e})") from None
        if label.ndim != 2:
            raise ValueError(f"label {ann_path}: expected a single-channel class-index PNG, got shape {label.shape}")
        if label.shape != (image.height, image.width):
            raise ValueError(
                f"label {ann_path}: size {label.shape[1]}x{label.shape[0]} differs from its image "
                f"{img_path.name} ({image.width}x{image.height})"
            )
        label = torch.from_numpy(label)
        if self.reduce_zero_label:  # ADE20K: 0 = other -> ignore, 1..K -> 0..K-1
            label = torch.where(label == 0, IGNORE, label - 1)
        valid = label[label != IGNORE]
        if valid.numel() and valid.max() >= self.num_classes:
            raw = int(valid.max()) + (1 if self.reduce_zero_label else 0)
            raise ValueError(
                f"label {ann_path}: class {raw} found but the dataset has {self.num_classes} classes "
                f"(training: classes.json or --num-classes; evaluation: the model's class count)"
            )
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pil, label = self.read(index)
        image = to_tensor(pil)
        if not self.train:
            s = keep_ratio_scale(pil.height, pil.width, self.scale)
            size = (max(1, round(pil.height * s)), max(1, round(pil.width * s)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            return normalize(image), label
        with seeded_item(self.seed, self.epoch, index):
            image, label = self._augment(pil, image, label)
        image = normalize(image)
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - image.shape[1], 0), max(cw - image.shape[2], 0)
        if pad_h or pad_w:  # smaller than the crop: pad (bottom/right), padded pixels ignored
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
        return image, label

    def _augment(self, pil: Image.Image, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random rescale, crop and flip (python ``random``)."""
        ratio = random.uniform(*self.ratio_range)
        s = keep_ratio_scale(pil.height, pil.width, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        size = (max(1, round(pil.height * s)), max(1, round(pil.width * s)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        image, label = self._random_crop(image, label)
        if random.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label

    def _random_crop(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A crop in which no class covers more than 75% of the labelled pixels (MMSegmentation's cat_max_ratio)."""
        ch, cw = self.crop_size
        h, w = label.shape
        for _ in range(10):
            y, x = random.randint(0, max(h - ch, 0)), random.randint(0, max(w - cw, 0))
            crop = label[y : y + ch, x : x + cw]
            counts = torch.bincount(crop[crop != IGNORE].flatten(), minlength=1)
            if counts.numel() > 1 and counts.max() < 0.75 * counts.sum():
                break
        return image[:, y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def segmentation_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Training crops share one size: stack them."""
    images, labels = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(labels)


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, fixed RGB colours (golden-ratio hues) for drawing classes."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)) for i in range(n)]
