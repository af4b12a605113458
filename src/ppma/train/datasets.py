"""Standard small benchmarks by name: CIFAR-10, CIFAR-100, Fashion-MNIST, each with a training recipe.

``--data cifar10 --data-root DIR`` reads the dataset's own distribution files under ``DIR`` (the
layouts torchvision downloads: ``cifar-10-batches-py/``, ``cifar-100-python/``,
``FashionMNIST/raw/``); where they are missing it asks torchvision to download them, and where that
fails (no network) it says which files it looked for. The files are parsed here, not by torchvision's
dataset classes: those check the published MD5 sums (so a test cannot write small files in the real
format) and unpickle CIFAR without restriction; ours accepts only the numpy arrays, lists and strings
a CIFAR batch holds, so a tampered file cannot run code.

Each recipe is a set of ``TrainConfig`` overrides, like the digits recipe: every value can be
overridden by a flag. The default input sizes upsample (CIFAR 32 -> 64, Fashion-MNIST 28 -> 56) so
that the first stage's token grid is 16x16 / 14x14, large enough for a spatial mask to act.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import PPMAError

__all__ = ["NAMED_DATASETS", "NamedDataset", "load_named_dataset", "named_recipe"]


class ArrayImages(Dataset):
    """Images held in one uint8 array (n, H, W) or (n, H, W, 3) with integer targets; items are RGB PIL images."""

    def __init__(self, images: np.ndarray, targets: list[int], classes: list[str]) -> None:
        self.images, self.targets, self.classes = images, targets, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        pixels = self.images[index]
        image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
        return image.convert("RGB"), self.targets[index]


# ---- CIFAR: pickled numpy batches, read with an allow-list unpickler --------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds (dicts, lists, strings, numpy arrays) and nothing that runs code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # Python 2 byte strings read with encoding="latin1"
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            value = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise PPMAError(f"data: {path} is not a CIFAR batch file ({e})") from e
    if not isinstance(value, dict):
        raise PPMAError(f"data: {path} is not a CIFAR batch file (holds {type(value).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in value.items()}


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise PPMAError(f"data: {path}: 'data' must be uint8 (n, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # (n, 32, 32, 3)


def _read_cifar(folder: Path, files: list[str], label_key: str, meta: str, names_key: str) -> ArrayImages:
    images, targets = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if label_key not in batch:
            raise PPMAError(f"data: {folder / name} has no {label_key!r} entry")
        images.append(_cifar_images(batch, folder / name))
        targets.extend(int(t) for t in batch[label_key])
    classes = [str(c) for c in _unpickle(folder / meta)[names_key]]
    images = np.concatenate(images)
    if len(images) != len(targets) or (targets and not 0 <= min(targets) <= max(targets) < len(classes)):
        raise PPMAError(f"data: {folder}: labels do not match the images or the {len(classes)} class names")
    return ArrayImages(images, targets, classes)


# ---- Fashion-MNIST: IDX files, plain or gzipped --------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PPMAError(f"data: {path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise PPMAError(f"data: {path} holds {body.size} bytes where its header says {dims}")
    return body.reshape(dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # fmt: skip


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(folder / stem)


def _read_fashion(folder: Path, split: str) -> ArrayImages:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or (labels.size and labels.max() > 9):
        raise PPMAError(f"data: {folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return ArrayImages(images, [int(t) for t in labels], FASHION_CLASSES)


# ---- the registry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NamedDataset:
    """A benchmark: where its files live under the root, how to read a split, how to download, its recipe."""

    name: str
    folder: str  # sub-folder of the root holding the files
    files: tuple[str, ...]  # what must be there (for the error message)
    read: Callable[[Path, str], ArrayImages]
    torchvision_class: str
    recipe: dict[str, Any] = field(default_factory=dict)

    def missing(self, root: Path) -> list[str]:
        folder = root / self.folder
        return [f for f in self.files if not (folder / f).is_file() and not (folder / (f + ".gz")).is_file()]


_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")  # fmt: skip

# Shared by the three recipes: a CPU-sized network, light augmentation, no mixup (small images, short runs).
_SMALL_RECIPE: dict[str, Any] = dict(
    model="ppma_nano", crop_pct=1.0, interpolation="bicubic", scale=(0.5, 1.0), ratio=(0.75, 1.333),
    color_jitter=0.0, auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.1,
    batch_size=128, lr_base=5e-3, warmup_epochs=2, ema_decay=0.999, ema_warmup=True,
)  # fmt: skip

NAMED_DATASETS: dict[str, NamedDataset] = {
    "cifar10": NamedDataset(
        "cifar10", "cifar-10-batches-py", _CIFAR10_FILES,
        lambda folder, split: _read_cifar(
            folder, [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"],
            "labels", "batches.meta", "label_names"),
        "CIFAR10",
        {**_SMALL_RECIPE, "input_size": 64, "hflip": 0.5, "epochs": 30,
         "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    ),
    "cifar100": NamedDataset(
        "cifar100", "cifar-100-python", ("train", "test", "meta"),
        lambda folder, split: _read_cifar(folder, ["train" if split == "train" else "test"], "fine_labels", "meta",
                                          "fine_label_names"),
        "CIFAR100",
        {**_SMALL_RECIPE, "input_size": 64, "hflip": 0.5, "epochs": 40,
         "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
    ),
    "fashion_mnist": NamedDataset(
        "fashion_mnist", "FashionMNIST/raw", _FASHION_FILES, _read_fashion, "FashionMNIST",
        {**_SMALL_RECIPE, "input_size": 56, "hflip": 0.5, "epochs": 15,
         "mean": (0.2860,) * 3, "std": (0.3530,) * 3},
    ),
}  # fmt: skip
_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist"}


def _spec(name: str) -> NamedDataset:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in NAMED_DATASETS:
        raise ValueError(f"data: unknown dataset {name!r}; known: digits, {', '.join(NAMED_DATASETS)}")
    return NAMED_DATASETS[key]


def named_recipe(name: str) -> dict[str, Any]:
    """The ``TrainConfig`` overrides of a named dataset (a copy)."""
    return dict(_spec(name).recipe)


def _download(spec: NamedDataset, root: Path) -> None:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def load_named_dataset(name: str, root: str | Path | None, split: str, download: bool = True) -> ArrayImages:
    """One split (``"train"`` or ``"val"``, the test set) of a named dataset, read from ``root``.

    Missing files are downloaded through torchvision when ``download`` (and a network) allows; otherwise a
    one-line ``PPMAError`` names the files that were looked for.
    """
    spec = _spec(name)
    if split not in ("train", "val"):
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
    if root is None:
        raise ValueError(f"data: {spec.name} needs --data-root, the folder that holds (or will hold) {spec.folder}/")
    root = Path(root).expanduser()
    missing = spec.missing(root)
    if missing and download:
        try:
            _download(spec, root)
        except Exception as e:  # no network, a proxy, a full disk: say what was needed instead
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PPMAError(
                f"data: {spec.name}: {root / spec.folder} lacks {', '.join(missing)} and the download failed ({why}); "
                f"put the dataset's standard files there"
            ) from e
        missing = spec.missing(root)
    if missing:
        raise PPMAError(f"data: {spec.name}: {root / spec.folder} lacks {', '.join(missing)} (the dataset's standard "
                        "files; pass --data-root to the folder that holds them)")  # fmt: skip
    return spec.read(root / spec.folder, split)
