"""Generated ImageNet-layout folders for the training tests: one colour per class, noisy, non-square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = ((210, 40, 40), (40, 210, 40), (40, 40, 210), (210, 210, 40))


def make_image_folder(root: Path, classes: int = 3, train: int = 8, val: int = 4, size: tuple[int, int] = (40, 48),
                      seed: int | None = None) -> Path:  # fmt: skip
    """root/{train,val}/class{c}/{i}.png: class c is colour c plus Gaussian noise, (H, W) = ``size``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.array(COLOURS[c]) + rng.normal(0, 40, (*size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test process: on a shared 2-core machine two OpenMP threads per process thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
