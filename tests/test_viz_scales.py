"""Pictures that compare: one colour scale per sweep, a log scale for attention, decays on one stated range."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import LogNorm

from ppma import viz
from ppma.viz import render


@pytest.fixture(scope="module")
def cap():
    rng = np.random.default_rng()
    y, x = np.mgrid[0:48, 0:64]
    pixels = (np.stack([x / 64, y / 48, (x + y) / 112], -1) * 200 + rng.random((48, 64, 3)) * 55).astype(np.uint8)
    return viz.run("ppma_nano", pixels, size=64)


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def test_sweep_frames_share_one_scale(cap):
    for what in ("attention", "mask"):
        queries, maps, norm = render.sweep_maps(cap, 1, 0, 0, what, steps=2)
        values = [v for _, v in maps]
        assert len(queries) == 4
        assert norm.vmax == pytest.approx(max(float(v.max()) for v in values))  # the largest of ALL frames
        if what == "attention":
            per_frame_max = sorted(float(v.max()) for v in values)
            assert per_frame_max[0] < norm.vmax  # a frame-by-frame scale would have differed
            assert isinstance(norm, LogNorm)
        else:  # the query's own mask value is 1 in every frame; the low end is fixed at 0, not each frame's min
            assert norm.vmin == 0 and norm.vmax == pytest.approx(1.0)


def test_attention_figure_uses_a_stated_log_scale(cap):
    fig = viz.attention_figure(cap, (0.4, 0.6), stage=1, block=0, head=0)
    norms = {id(im.norm) for im in _images(fig) if im.get_array().ndim == 2}
    assert len(norms) == 1  # every attention panel on the same scale
    norm = next(im.norm for im in _images(fig) if im.get_array().ndim == 2)
    assert isinstance(norm, LogNorm) and norm.vmin == pytest.approx(norm.vmax * 1e-4)
    labels = [ax.get_ylabel() for ax in fig.axes if "attention weight" in ax.get_ylabel()]
    assert labels and all("log scale" in label for label in labels)


def test_decay_figure_shows_the_image_once_on_a_shared_range(cap):
    fig = viz.decay_figure(cap)
    # The stand-alone photograph panel (the decay panels draw it only as their backdrop) appears once.
    photo_panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_images()
                    and all(im.get_array().ndim == 3 for im in ax.get_images())]
    assert len(photo_panels) == 1
    overlays = [im for im in _images(fig) if im.get_array().ndim == 2]
    assert len(overlays) == 2 * len(cap.blocks)
    lows, highs = {im.norm.vmin for im in overlays}, {im.norm.vmax for im in overlays}
    assert len(lows) == 1 and len(highs) == 1 and 0 <= lows.pop() < highs.pop() <= 1
    assert "random-weight decay factors" in fig._suptitle.get_text()
    assert "learned" not in fig._suptitle.get_text()
