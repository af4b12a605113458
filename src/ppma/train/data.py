"""Datasets and loaders: ImageNet-layout folders (checked), the built-in digits, the named benchmarks of
``datasets.py`` (``--data cifar10``), timm transforms.

Augmentation is seeded per sample from (seed, epoch, index), so it does not depend on how many
loader processes run or where a run was resumed: a resumed run sees the same images as one that was
never stopped. Unreadable images are skipped in the loader and counted; the count travels with the
batch so the training loop can report it at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import PPMAError
from ..images import ImageFolderIndex, ImageReadError, class_folders, index_image_folder, load_rgb
from .config import TrainConfig

__all__ = [
    "Batch",
    "DigitsDataset",
    "SafeImageFolder",
    "build_datasets",
    "build_eval_dataset",
    "build_transform",
    "describe_data",
    "check_image_folder",
    "describe_folders",
    "index_image_splits",
    "available_cpus",
    "default_workers",
    "make_loader",
    "seeded_item",
]

DIGITS_CLASSES = [str(i) for i in range(10)]


# ---- datasets -------------------------------------------------------------------------------------------


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes) as RGB PIL images.

    A fixed stratified split (80 % train: 1,437 images, 20 % val: 360) that never changes with the run's
    seed, so accuracies of different runs compare. Images are upscaled to ``size`` once (bicubic), so
    random crops have sub-pixel granularity.

    Args:
        split: ``"train"`` or ``"val"``.
        size: side of the stored images.
    """

    classes = DIGITS_CLASSES

    def __init__(self, split: str, size: int = 32) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        digits = load_digits()
        idx_train, idx_val = train_test_split(
            np.arange(len(digits.target)), test_size=0.2, random_state=0, stratify=digits.target
        )
        idx = idx_train if split == "train" else idx_val
        pixels = (digits.images[idx] * (255 / 16)).round().astype(np.uint8)  # (n, 8, 8), 0..16 -> 0..255
        self.images = [Image.fromarray(p, "L").resize((size, size), Image.BICUBIC).convert("RGB") for p in pixels]
        self.targets = [int(t) for t in digits.target[idx]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], self.targets[index]


class SafeImageFolder(Dataset):
    """A split of class folders, indexed by ``ppma.images.index_image_folder`` (the same function that
    checks the folder: hidden files and folders ignored, GIF included, other files counted by kind);
    images decoded by ``ppma.images.load_rgb`` (16-bit and [0, 1] float scaled). Unreadable images come
    back as ``None`` instead of raising.

    Returns (PIL image or None, class index, path).
    """

    def __init__(self, root: str | Path, index: ImageFolderIndex | None = None) -> None:
        root = Path(root)
        if index is None:
            if not root.is_dir():
                raise FileNotFoundError(f"data: no folder at {root}")
            index = index_image_folder(root)
        self.root, self.index = root, index
        self.classes = index.classes
        self.samples = index.samples
        self.targets = [label for _, label in index.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image | None, int, str]:
        path, target = self.samples[index]
        try:
            image = load_rgb(path)
        except ImageReadError:
            image = None
        return image, target, path


def index_image_splits(root: str | Path, splits: Sequence[str]) -> dict[str, ImageFolderIndex]:
    """Check an ImageNet-layout folder and index each split (one walk of the files per split).

    Raises a one-line error for: no folder, a missing split, a split without class folders, a class
    folder without images, or class folders that differ between splits. Hidden files and folders are
    ignored (``ppma.images``), so the classes checked are the classes indexed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data: no folder at {root}")
    indexes: dict[str, ImageFolderIndex] = {}
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"data: {root} has no '{split}' folder (expected {root}/{split}/<class>/<image>)")
        if not class_folders(folder):
            raise PPMAError(f"data: {folder} has no class folders (expected {folder}/<class>/<image>)")
        index = index_image_folder(folder)
        empty = [name for name, n in zip(index.classes, index.images_per_class(), strict=True) if n == 0]
        if empty:
            raise PPMAError(f"data: {folder} has empty class folders: {', '.join(empty[:5])} (no images"
                            + (f"; {index.describe_skipped()})" if index.skipped else ")"))  # fmt: skip
        indexes[split] = index
    first, *rest = splits
    for split in rest:
        a, b = indexes[first].classes, indexes[split].classes
        if a != b:
            only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            raise PPMAError(
                f"data: class folders differ between {first}/ and {split}/: only in {first}: {only_a[:5]}, "
                f"only in {split}: {only_b[:5]}"
            )
    return indexes


def check_image_folder(root: str | Path, splits: Sequence[str]) -> list[str]:
    """The class names of an ImageNet-layout folder, checked (see ``index_image_splits``)."""
    return index_image_splits(root, splits)[splits[0]].classes


def describe_folders(*datasets: Dataset) -> str:
    """'; skipped in train: 3 non-image files: 2 .txt, 1 hidden' for the class-folder sets among ``datasets``."""
    notes = []
    for d in datasets:
        source = getattr(d, "source", d)
        if isinstance(source, SafeImageFolder) and source.index.skipped:
            notes.append(f"{source.root.name}: {source.index.describe_skipped()}")
    return ("; " + "; ".join(notes)) if notes else ""


# ---- transforms and seeded augmentation -----------------------------------------------------------------


def build_transform(config: TrainConfig, is_training: bool) -> Callable:
    """timm's train transform (RandomResizedCrop, flip, RandAugment, random erasing) or the eval one
    (resize to ``input_size / crop_pct``, centre crop), both ending in a normalised (3, S, S) tensor."""
    from timm.data import create_transform

    if not is_training:
        return create_transform(config.input_size, is_training=False, interpolation=config.interpolation,
                                mean=config.mean, std=config.std, crop_pct=config.crop_pct)  # fmt: skip
    return create_transform(
        config.input_size,
        is_training=True,
        scale=config.scale,
        ratio=config.ratio,
        hflip=config.hflip,
        color_jitter=config.color_jitter,
        auto_augment=config.auto_augment,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
        re_prob=config.reprob,
        re_mode=config.remode,
        re_count=config.recount,
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random for a block, then give the caller's states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def seeded_item(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Randomness for one item drawn from a seed of (seed, epoch, index): the same augmentation whichever
    worker, process or resumed run makes the item."""
    with _seeded(int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])):
        yield


class Transformed(Dataset):
    """Applies a transform with randomness seeded by (seed, epoch, index); items are (image, target, path).

    ``image`` is None where the source could not read the file.
    """

    def __init__(self, source: Dataset, transform: Callable, seed: int = 0) -> None:
        self.source, self.transform, self.seed, self.epoch = source, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str]:
        item = self.source[index]
        image, target = item[0], item[1]
        path = item[2] if len(item) > 2 else str(index)
        if image is None:
            return None, target, path
        with seeded_item(self.seed, self.epoch, index):
            return self.transform(image), target, path


@dataclass
class Batch:
    """A collated batch: images (B, 3, S, S), targets (B,), and the paths of images that could not be read."""

    images: torch.Tensor | None
    targets: torch.Tensor | None
    skipped: list[str]

    def __len__(self) -> int:
        return 0 if self.targets is None else len(self.targets)


def collate(items: list[tuple[torch.Tensor | None, int, str]]) -> Batch:
    """Stack the readable items; list the paths of the others."""
    good = [(x, t) for x, t, _ in items if x is not None]
    skipped = [p for x, _, p in items if x is None]
    if not good:
        return Batch(None, None, skipped)
    return Batch(torch.stack([x for x, _ in good]), torch.tensor([t for _, t in good]), skipped)


# ---- samplers -------------------------------------------------------------------------------------------


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(most: int = 4) -> int:
    """Data-loading processes when none are given: ``most``, at most the CPUs available (more made torch
    print a multi-line warning about too many worker processes on a small machine). ``ppma eval``."""
    return min(most, available_cpus())


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, drop_last: bool,
                pin_memory: bool = False) -> DataLoader:  # fmt: skip
    """A DataLoader that draws its worker seed from a private generator: the global RNG stays untouched."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # no draw from the global RNG when an epoch starts
        persistent_workers=False,  # workers must see the dataset's new epoch
    )


# ---- building the datasets of a run -----------------------------------------------------------------------


def _named(config: TrainConfig) -> bool:
    return config.data is not None and config.data != "digits"


def describe_data(config: TrainConfig) -> str:
    """Where a run's images come from, for its first line: 'cifar10 (D)', the folder, or the digits."""
    if _named(config):
        return f"{config.data} ({config.data_root})"
    return "digits (built in)" if config.data_path is None else config.data_path


def build_datasets(config: TrainConfig) -> tuple[Transformed, Transformed, list[str]]:
    """(train, val, class names) for a run: a named benchmark (``config.data``, its test set as val), an
    ImageNet-layout folder (``config.data_path``), else the digits. Folders are checked and indexed once;
    ``describe_folders(train, val)`` says what was skipped."""
    if _named(config):
        from .datasets import load_named_dataset

        sources: tuple[Dataset, ...] = tuple(load_named_dataset(config.data, config.data_root, s)
                                             for s in ("train", "val"))  # fmt: skip
        classes = list(sources[0].classes)
    elif config.data_path is None:
        classes = DIGITS_CLASSES
        sources = tuple(DigitsDataset(s, size=config.input_size) for s in ("train", "val"))
    else:
        root, splits = Path(config.data_path), (config.train_split, config.val_split)
        indexes = index_image_splits(root, splits)
        classes = indexes[config.train_split].classes
        sources = tuple(SafeImageFolder(root / s, indexes[s]) for s in splits)
    train = Transformed(sources[0], build_transform(config, True), config.seed)
    val = Transformed(sources[1], build_transform(config, False), config.seed)
    return train, val, classes


def build_eval_dataset(data_path: str | None, config: TrainConfig) -> tuple[Transformed, list[str]]:
    """The evaluation set: ``data_path/val`` if it exists, else ``data_path``; without a path, the val split
    of the run's own data: its image folder (``config.data_path``), named dataset (``config.data``) or
    the digits."""
    if data_path is None and config.data_path is not None:
        # a run trained on an image folder: its val split, never the digits in its place
        if not Path(config.data_path).is_dir():
            raise PPMAError(f"data: the checkpoint was trained on {config.data_path}, which is not there; "
                            "give --data-path")  # fmt: skip
        data_path = config.data_path
    if data_path is None:
        if _named(config):
            from .datasets import load_named_dataset

            source = load_named_dataset(config.data, config.data_root, "val")
            return Transformed(source, build_transform(config, False)), list(source.classes)
        return Transformed(DigitsDataset("val", size=config.input_size), build_transform(config, False)), DIGITS_CLASSES
    root = Path(data_path)
    parent, split = (root, config.val_split) if (root / config.val_split).is_dir() else (root.parent, root.name)
    index = index_image_splits(parent, [split])[split]
    return Transformed(SafeImageFolder(parent / split, index), build_transform(config, False)), index.classes


def describe_skipped(paths: list[str], limit: int = 3) -> str:
    """'N unreadable images skipped (a, b, c, ...)' or ''."""
    if not paths:
        return ""
    shown = ", ".join(paths[:limit]) + (", ..." if len(paths) > limit else "")
    return f"{len(paths)} unreadable image(s) skipped ({shown})"
