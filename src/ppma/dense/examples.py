"""Built-in example sets from photographs that ship with scikit-image: nothing to download.

The pixels are real photographs (``skimage.data.coins``: 24 coins on a table; ``skimage.data.page``:
a scanned page of text). The labels are generated, not hand-drawn:

- coins: the scikit-image gallery's watershed segmentation (Sobel elevation, markers at grey < 30 and
  > 150, holes filled, specks under 100 px removed) gives the 24 coin instances; boxes are the
  instances' extents.
- page: ink is where the page is darker than its Sauvola threshold (window 25), paper elsewhere.

Train and validation come from disjoint parts of each photograph (coins: the top three rows vs
the bottom row; page: the left two thirds vs the right third), so no validation object is seen in
training. Coins cut by a crop edge to under 60% of their area become crowd regions (``iscrowd=1``),
ignored by training and by COCO scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["build_coins_detection", "build_builtin_segmentation", "SEGMENTATION_CLASSES"]

SEGMENTATION_CLASSES = ["table", "coin", "paper", "ink"]  # ADE20K-style file labels 1..4; 0 = ignore
_COIN_ROWS_SPLIT = 225  # rows y < 225 hold the top three coin rows (train), y >= 222 the bottom row (val)
_PAGE_COLS_SPLIT = 256


def _coin_instances() -> tuple[np.ndarray, np.ndarray]:
    """(coins image (303, 384) uint8, instance ids (303, 384) int: 0 table, 1..24 coins)."""
    from scipy import ndimage as ndi
    from skimage import data, filters, segmentation

    coins = data.coins()
    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2
    fg = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(coins), markers) == 2)
    ids, n = ndi.label(fg)
    sizes = ndi.sum(fg, ids, range(1, n + 1))
    keep = np.concatenate([[0], np.cumsum(sizes >= 100) * (sizes >= 100)])  # relabel, dropping specks
    return coins, keep[ids]


def _page_labels() -> tuple[np.ndarray, np.ndarray]:
    """(page image (191, 384) uint8, file labels: 3 paper, 4 ink)."""
    from skimage import data, filters

    page = data.page()
    ink = page < filters.threshold_sauvola(page, window_size=25)
    return page, np.where(ink, 4, 3).astype(np.uint8)


def _variants(a: np.ndarray) -> list[np.ndarray]:
    """The array and its horizontal, vertical and double flips."""
    return [a, a[:, ::-1], a[::-1], a[::-1, ::-1]]


def _save_gray_as_rgb(gray: np.ndarray, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(gray)).convert("RGB").save(path)


def build_coins_detection(root: str | Path, train_crops: int = 12, seed: int = 0) -> Path:
    """Write the coins detection set in COCO layout (``annotations/instances_{train,val}.json``, ``train/``, ``val/``).

    Train: the top region (3 coin rows) in its 4 flips, plus ``train_crops`` random 144x192 crops;
    val: the bottom coin row and its horizontal flip. One category, ``coin``. Idempotent: an
    existing complete set is reused.

    Returns:
        ``root``.
    """
    root = Path(root)
    if (root / "annotations" / "instances_val.json").is_file():
        return root
    from pycocotools import mask as mask_utils  # the RLE encoder: missing, fail before a file is written

    coins, ids = _coin_instances()
    full_area = {i: int((ids == i).sum()) for i in range(1, int(ids.max()) + 1)}
    splits = _coin_splits(coins, ids, train_crops, seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):  # val written last: its annotation file marks the set complete
        _write_coco_split(root, split, splits[split], full_area, mask_utils)
    return root


def _coin_splits(
    coins: np.ndarray, ids: np.ndarray, train_crops: int, seed: int
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The (image, instance ids) pairs of each split: train, the top region's 4 flips and ``train_crops``
    random 144x192 crops of it (each mirrored with probability 1/2); val, the bottom row and its mirror image."""
    rng = np.random.default_rng(seed)
    top, top_ids = coins[:_COIN_ROWS_SPLIT], ids[:_COIN_ROWS_SPLIT]
    bottom, bottom_ids = coins[_COIN_ROWS_SPLIT - 3 :], ids[_COIN_ROWS_SPLIT - 3 :]
    splits = {
        "train": list(zip(_variants(top), _variants(top_ids), strict=True)),
        "val": [(bottom, bottom_ids), (bottom[:, ::-1], bottom_ids[:, ::-1])],
    }
    for _ in range(train_crops):
        y, x = int(rng.integers(0, top.shape[0] - 144 + 1)), int(rng.integers(0, top.shape[1] - 192 + 1))
        flip = rng.random() < 0.5
        crop, crop_ids = top[y : y + 144, x : x + 192], top_ids[y : y + 144, x : x + 192]
        splits["train"].append((crop[:, ::-1], crop_ids[:, ::-1]) if flip else (crop, crop_ids))
    return splits


def _write_coco_split(
    root: Path, split: str, pairs: list[tuple[np.ndarray, np.ndarray]], full_area: dict[int, int], mask_utils
) -> None:
    """Write one split: its images to ``root/split/``, then the coin instances of each image to
    ``root/annotations/instances_{split}.json`` (written beside it and renamed: never half-written)."""
    (root / split).mkdir(exist_ok=True)
    images, anns = [], []
    for k, (img, inst) in enumerate(pairs):
        name = f"coins_{split}_{k:03d}.png"
        _save_gray_as_rgb(img, root / split / name)
        images.append(dict(id=k + 1, file_name=name, height=int(img.shape[0]), width=int(img.shape[1])))
        anns += _coin_annotations(inst, k + 1, len(anns) + 1, full_area, mask_utils)
    data = dict(images=images, annotations=anns, categories=[dict(id=1, name="coin", supercategory="object")])
    from ..checkpoint import atomic_write_text

    atomic_write_text(root / "annotations" / f"instances_{split}.json", json.dumps(data))


def _coin_annotations(
    inst: np.ndarray, image_id: int, first_id: int, full_area: dict[int, int], mask_utils
) -> list[dict]:
    """COCO annotations (ids from ``first_id``) of the coins in one image's instance ids: a mask (RLE, by
    ``pycocotools.mask``), its box and area, and ``iscrowd`` where a crop edge left under 60% of the coin
    (``full_area``: whole coins)."""
    anns = []
    for i in np.unique(inst[inst > 0]):
        m = np.asfortranarray((inst == i).astype(np.uint8))
        rle = mask_utils.encode(m)
        x0, y0, w, h = (float(v) for v in mask_utils.toBbox(rle))
        rle["counts"] = rle["counts"].decode("ascii")
        crowd = int(m.sum() < 0.6 * full_area[int(i)])  # cut by the edge: ignore, do not score
        anns.append(dict(id=first_id + len(anns), image_id=image_id, category_id=1, bbox=[x0, y0, w, h],
                         area=float(m.sum()), iscrowd=crowd, segmentation=rle))  # fmt: skip
    return anns


def build_builtin_segmentation(root: str | Path) -> Path:
    """Write the coins + page segmentation set in ADE20K layout with 4 classes (``classes.json``).

    File labels: 0 ignore (a 1-pixel ring on every coin edge, where the generated mask is least
    certain), 1 table, 2 coin, 3 paper, 4 ink. Train: the top coin region and the left page part,
    each in 4 flips (8 images); val: the bottom coin row and the right page part, each with its
    horizontal flip (4 images). Idempotent.

    Returns:
        ``root``.
    """
    from scipy import ndimage as ndi

    root = Path(root)
    if (root / "classes.json").is_file():
        return root
    coins, ids = _coin_instances()
    fg = ids > 0
    coin_labels = np.where(fg, 2, 1).astype(np.uint8)
    ring = ndi.binary_dilation(fg) & ~ndi.binary_erosion(fg)
    coin_labels[ring] = 0
    page, page_labels = _page_labels()
    cut = _COIN_ROWS_SPLIT
    splits = {
        "training": list(zip(_variants(coins[:cut]), _variants(coin_labels[:cut]), strict=True))
        + list(zip(_variants(page[:, :_PAGE_COLS_SPLIT]), _variants(page_labels[:, :_PAGE_COLS_SPLIT]), strict=True)),
        "validation": [
            (coins[cut - 3 :], coin_labels[cut - 3 :]),
            (coins[cut - 3 :, ::-1], coin_labels[cut - 3 :, ::-1]),
            (page[:, _PAGE_COLS_SPLIT:], page_labels[:, _PAGE_COLS_SPLIT:]),
            (page[:, _PAGE_COLS_SPLIT:][:, ::-1], page_labels[:, _PAGE_COLS_SPLIT:][:, ::-1]),
        ],
    }
    for split, items in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for k, (img, lab) in enumerate(items):
            _save_gray_as_rgb(img, root / "images" / split / f"{split}_{k:03d}.png")
            Image.fromarray(np.ascontiguousarray(lab)).save(root / "annotations" / split / f"{split}_{k:03d}.png")
    from ..checkpoint import atomic_write_text

    atomic_write_text(root / "classes.json", json.dumps(SEGMENTATION_CLASSES))  # last: marks the set complete
    return root
