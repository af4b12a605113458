"""Image files: which files are images, which folders are classes, and decoding to 8-bit RGB with the right scale.

One place decides both what a folder check counts and what a dataset indexes, so the two cannot
disagree (a hidden ``.thumbs/`` folder used to be skipped by the check and indexed by the dataset,
shifting every label after it). Hidden files and folders (a leading dot) are ignored everywhere;
every other file that is not an image is counted by its extension and reported.

Decoding converts what PIL opens in wider formats instead of letting ``convert("RGB")`` clip it:
16-bit images are scaled by 255/65535, float images with values in [0, 1] by 255; a float image
outside [0, 1] is refused (its range is unknown). A file larger than PIL's decompression-bomb limit
is refused before it is decoded.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import PPMAError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderIndex", "ImageReadError", "class_folders", "describe_skipped_files",
           "image_files", "index_image_folder", "is_hidden", "is_image_file", "load_or_record", "load_rgb",
           "require_a_readable_image"]  # fmt: skip

# torchvision's ImageFolder extensions, and GIF (its first frame), which PIL reads as well.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageReadError(PPMAError):
    """An image file that cannot be used: unreadable, truncated, too large, or of an unknown value range."""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_file(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(split: str | Path) -> list[str]:
    """The class folders of a split: its non-hidden sub-folders, sorted (the label of each is its index)."""
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not is_hidden(e.name))


@dataclass
class ImageFolderIndex:
    """The images of a split of class folders: (path, label) samples, the classes, and what was skipped."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: Counter = field(default_factory=Counter)  # extension (or "hidden") -> count

    def images_per_class(self) -> list[int]:
        counts = Counter(label for _, label in self.samples)
        return [counts[i] for i in range(len(self.classes))]

    def describe_skipped(self) -> str:
        """'skipped 3 files: 2 .txt, 1 hidden' or ''."""
        return describe_skipped_files(self.skipped)


def describe_skipped_files(skipped: Counter) -> str:
    """'skipped 3 non-image files: 2 .txt, 1 hidden' or '' (``skipped``: kind -> count)."""
    if not skipped:
        return ""
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
    return f"skipped {sum(skipped.values())} non-image files: {parts}"


def image_files(folder: str | Path) -> tuple[list[str], Counter]:
    """The images at any depth below ``folder`` (a sorted walk, hidden files and folders left out), and
    the other files counted by extension (or "hidden")."""
    files: list[str] = []
    skipped: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        hidden_dirs = [d for d in dirnames if is_hidden(d)]
        skipped["hidden"] += len(hidden_dirs)
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))  # os.walk descends into what is left
        for file in sorted(filenames):
            if is_image_file(file):
                files.append(os.path.join(dirpath, file))
            else:
                skipped["hidden" if is_hidden(file) else (Path(file).suffix.lower() or "no extension")] += 1
    return files, Counter({k: v for k, v in skipped.items() if v})


def index_image_folder(split: str | Path) -> ImageFolderIndex:
    """Walk a split's class folders (recursively, in sorted order), indexing images and counting the rest."""
    split = Path(split)
    classes = class_folders(split)
    samples: list[tuple[str, int]] = []
    skipped: Counter = Counter()
    for label, name in enumerate(classes):
        files, other = image_files(split / name)
        samples.extend((file, label) for file in files)
        skipped.update(other)
    return ImageFolderIndex(classes, samples, skipped)


def _to_uint8(image: Image.Image, path: str) -> Image.Image:
    """An 8-bit image of the same picture: 16-bit scaled by 255/65535, float in [0, 1] by 255."""
    mode = image.mode
    if mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64) * (255 / 65535)
    elif mode == "I":  # 32-bit integers: PIL's mode for 16-bit grayscale PNGs
        pixels = np.asarray(image, dtype=np.float64)
        high = pixels.max(initial=0)
        if pixels.min(initial=0) < 0 or high > 65535:
            raise ImageReadError(f"{path}: 32-bit integer pixels in [{pixels.min()}, {high}]: unknown range")
        pixels = pixels * (255 / 65535)
    elif mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all() or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 1:
            raise ImageReadError(
                f"{path}: float pixels in [{np.nanmin(pixels):.3g}, {np.nanmax(pixels):.3g}]; only [0, 1] is "
                "understood (scale the image to 8 bits or to [0, 1])"
            )
        pixels = pixels * 255
    else:
        return image
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to 8-bit RGB; an ``ImageReadError`` naming the file and the problem otherwise."""
    path = str(path)
    try:
        with warnings.catch_warnings():
            # PIL warns between 1x and 2x its pixel limit and raises above; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f, Image.open(f) as image:
                image.load()  # the full decode inside the try: truncated files fail here
                return _to_uint8(image, path).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path}: too many pixels to decode safely ({e})") from e
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: no such file") from e
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for unknown or damaged files
        raise ImageReadError(f"{path}: not a readable image ({str(e).strip() or type(e).__name__})") from e


def load_or_record(path: str | Path, records: list[dict]) -> Image.Image | None:
    """``load_rgb(path)``, or None after appending ``{"file", "error"}`` to ``records``: one unreadable image
    does not stop a prediction over many (``ppma predict``, ``ppma detect|segment predict``)."""
    try:
        return load_rgb(path)
    except ImageReadError as e:
        records.append(dict(file=str(path), error=str(e)))
        return None


def require_a_readable_image(records: list[dict]) -> None:
    """A prediction's end: a one-line ``PPMAError`` naming the first image when none could be read."""
    if records and all("error" in r for r in records):
        more = f" (and {len(records) - 1} more unreadable)" if len(records) > 1 else ""
        raise PPMAError(f"predict: no readable image: {records[0]['error']}{more}")
