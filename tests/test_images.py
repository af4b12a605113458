"""Image decoding (16-bit, float, bombs, damaged files) and the one folder index shared by checks and datasets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ppma.images import ImageReadError, class_folders, index_image_folder, load_rgb


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng()
    pixels = rng.integers(0, 65536, size=(9, 13), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (9, 13, 3)
    expected = np.rint(pixels.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb.max() > 200 and rgb.min() < 60  # neither saturated nor black


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    pixels = np.random.default_rng().random((7, 5)).astype(np.float32)
    Image.fromarray(pixels, "F").save(tmp_path / "f.tif")
    rgb = np.asarray(load_rgb(tmp_path / "f.tif"))
    np.testing.assert_array_equal(rgb[..., 2], np.rint(pixels.astype(np.float64) * 255))


def test_float_image_of_unknown_range_is_refused(tmp_path):
    pixels = (np.random.default_rng().random((4, 4)) * 1000).astype(np.float32)
    Image.fromarray(pixels, "F").save(tmp_path / "hdr.tif")
    with pytest.raises(ImageReadError, match=r"hdr.tif: float pixels in \[.*only \[0, 1\]"):
        load_rgb(tmp_path / "hdr.tif")


def test_decompression_bomb_and_damaged_files_are_one_line_errors(tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng().integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 4096-pixel image now counts as a bomb
    with pytest.raises(ImageReadError, match="a.png: too many pixels"):
        load_rgb(tmp_path / "a.png")
    monkeypatch.undo()
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.png", "text.jpg", "missing.png"):
        with pytest.raises(ImageReadError, match=name) as info:
            load_rgb(tmp_path / name)
        assert "\n" not in str(info.value)


def _png(path, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(path)


def test_hidden_folders_and_files_never_shift_labels(tmp_path):
    rng = np.random.default_rng()
    split = tmp_path / "train"
    _png(split / ".thumbs" / "x.png", rng)  # hidden class-level folder: not a class
    _png(split / ".ipynb_checkpoints" / "y.png", rng)
    _png(split / "ant" / "1.png", rng)
    _png(split / "ant" / ".cache" / "2.png", rng)  # hidden sub-folder: not indexed
    _png(split / "bee" / "3.png", rng)
    _png(split / "bee" / "deeper" / "4.gif", rng)
    (split / "bee" / "notes.txt").write_text("x")
    (split / "bee" / ".DS_Store").write_text("x")
    assert class_folders(split) == ["ant", "bee"]
    index = index_image_folder(split)
    labels = {p.split("/train/")[1]: y for p, y in index.samples}
    assert labels == {"ant/1.png": 0, "bee/3.png": 1, "bee/deeper/4.gif": 1}
    assert index.skipped == {"hidden": 2, ".txt": 1}
    assert index.images_per_class() == [1, 2]
    assert "skipped 3 non-image files" in index.describe_skipped()
