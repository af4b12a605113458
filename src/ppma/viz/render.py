"""Matplotlib figures over the arrays of ``ppma.viz.maps``: heatmaps on the token grid, overlays on the
image, the N x N mask matrix, and an animated GIF that moves the query.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot, no GUI backend, no global state);
their pixel size is ``figsize * dpi`` exactly, and ``save`` writes them. Each panel has a title, axes
saying what they measure and a colour bar; the figure's bottom line says which weights made it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .capture import BlockCapture, Capture
from .maps import LogMaskFn, attention_maps, decay_maps, head_indices, mask_maps, mask_matrix, polyline_mask

__all__ = [
    "attention_figure",
    "decay_figure",
    "mask_figure",
    "mask_matrix_figure",
    "save",
    "save_gif",
    "sweep_frames",
    "sweep_queries",
    "zoo_mask_figure",
]  # fmt: skip

_OVERLAY_ALPHA = 0.6
_MASK_CMAP = "viridis"
_ATTN_CMAP = "inferno"
_DECAY_CMAP = "magma"


# ---- panels -----------------------------------------------------------------------------------------


def _figure(rows: int, cols: int, panel: tuple[float, float], dpi: int) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _describe(bc: BlockCapture, head: int | None) -> str:
    kind = "full attention" if bc.mode == "full" else "decomposed attention"
    heads = "mean of heads" if head is None else f"head {head % bc.heads}"
    return f"stage {bc.stage}, block {bc.block} ({kind}), {heads}, {bc.grid[0]}x{bc.grid[1]} tokens"


def _finish(fig: Figure, cap: Capture, title: str) -> Figure:
    """Title on top, the weights' caption at the bottom, both wrapped to the figure's width."""
    width = fig.get_figwidth()  # about 12 characters per inch at 11 pt, 19 at 7 pt
    fig.suptitle("\n".join(textwrap.wrap(title, int(width * 12))), fontsize=11)
    fig.supxlabel("\n".join(textwrap.wrap(cap.caption(), int(width * 17))), fontsize=7,
                  color="firebrick" if cap.weights is None else "black")  # fmt: skip
    return fig


def _grid_panel(
    ax: Axes,
    values: np.ndarray,
    title: str,
    cmap: str,
    label: str,
    token: tuple[int, int] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """A heatmap over the token grid (one cell per token), query token outlined."""
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("token column")
    ax.set_ylabel("token row")
    if token is not None:
        ax.add_patch(Rectangle((token[1] - 0.5, token[0] - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
    ax.figure.colorbar(im, ax=ax, shrink=0.85, label=label)


def _overlay_panel(
    ax: Axes,
    cap: Capture,
    bc: BlockCapture,
    values: np.ndarray,
    title: str,
    cmap: str,
    label: str,
    query: tuple[float, float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """A token map laid over the image; axes in the original image's pixels, query marked."""
    image = cap.image
    ax.imshow(image.pixels, extent=image.extent)
    # The grid covers the padded image: a token spans stride / scale original pixels.
    sy, sx = image.scale
    H, W = values.shape
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=_OVERLAY_ALPHA, interpolation="nearest",
                   extent=(0, W * bc.stride / sx, H * bc.stride / sy, 0))  # fmt: skip
    left, right, bottom, top = image.extent
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (image pixels)")
    ax.set_ylabel("y (image pixels)")
    if query is not None:
        x, y = image.query_pixel(query)
        ax.plot([x], [y], marker="+", color="cyan", markersize=12, mew=2)
    ax.figure.colorbar(im, ax=ax, shrink=0.85, label=label)


# ---- figures ----------------------------------------------------------------------------------------


def mask_figure(
    cap: Capture,
    query: tuple[float, float] = (0.5, 0.5),
    stage: int = 2,
    block: int = 0,
    head: int | None = 0,
    log_mask_fn: LogMaskFn = polyline_mask,
    mask_name: str = "polyline path mask",
    dpi: int = 100,
) -> Figure:
    """The mask of one query: H2V, V2H and their average, on the token grid (top) and over the image (bottom).

    Args:
        cap: from ``ppma.viz.run``.
        query: (x, y) in image pixels (ints) or fractions (floats).
        stage, block, head: which block's decays; ``head=None`` averages the heads.
        log_mask_fn: the (N, N) log-mask of one head's decays (see ``ppma.viz.maps.mask_maps``).
        mask_name: what the title calls the mask.
        dpi: pixels per inch of the figure (3 x 2 panels of 4 x 3.4 inches).
    """
    maps = mask_maps(cap, query, stage, block, head, log_mask_fn)
    bc, token = maps["block"], maps["token"]
    fig, axes = _figure(2, 3, (4.0, 3.4), dpi)
    label = "mask value exp(M)"
    for col, (key, name) in enumerate((("h2v", "H2V (row, then column)"), ("v2h", "V2H (column, then row)"),
                                       ("average", "average of H2V and V2H"))):  # fmt: skip
        _grid_panel(axes[0, col], maps[key], name, _MASK_CMAP, label, token)
        _overlay_panel(axes[1, col], cap, bc, maps[key], f"{key.upper() if col < 2 else 'average'} over the image",
                       _MASK_CMAP, label, query)  # fmt: skip
    return _finish(fig, cap, f"{mask_name} of query token {token}: {_describe(bc, head)}")


def mask_matrix_figure(
    cap: Capture,
    query: tuple[float, float] = (0.5, 0.5),
    stage: int = 2,
    block: int = 0,
    head: int = 0,
    window: tuple[int, int] = (4, 4),
    dpi: int = 100,
) -> Figure:
    """The full N x N mask matrix of a small window of tokens (as the paper's 4x4 illustration): H2V and V2H."""
    m = mask_matrix(cap, query, stage, block, head, window)
    bc, (top, left), (h, w) = m["block"], m["origin"], m["window"]
    n = h * w
    fig, axes = _figure(1, 2, (5.5, 5.0), dpi)
    names = [f"({top + r},{left + c})" for r in range(h) for c in range(w)]
    for ax, key, name in zip(axes[0], ("h2v", "v2h"), ("H2V mask exp(M)", "V2H mask exp(M^T)"), strict=True):
        # Upper end fixed at 1 (no decay); the lower end follows the data so weak decays still show.
        im = ax.imshow(m[key], cmap=_MASK_CMAP, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key token (row, column)")
        ax.set_ylabel("query token (row, column)")
        if n <= 36:  # labels stay legible up to a 6x6 window
            ax.set_xticks(range(n), names, rotation=90, fontsize=6)
            ax.set_yticks(range(n), names, fontsize=6)
        for b in range(w, n, w):  # lines between grid rows: the block structure of the matrix
            ax.axhline(b - 0.5, color="white", lw=0.6)
            ax.axvline(b - 0.5, color="white", lw=0.6)
        if n <= 16:
            for r in range(n):
                for c in range(n):
                    ax.text(
                        c,
                        r,
                        f"{m[key][r, c]:.3f}",
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="white" if m[key][r, c] < im.norm.vmin + 0.5 * (1 - im.norm.vmin) else "black",
                    )
        fig.colorbar(im, ax=ax, shrink=0.8, label="mask value")
    title = f"polyline mask matrix of the {h}x{w} tokens from ({top},{left}): {_describe(bc, head)}"
    return _finish(fig, cap, title)


def zoo_mask_figure(
    cap: Capture,
    masks: list[str] | tuple[str, ...],
    query: tuple[float, float] = (0.5, 0.5),
    stage: int = 2,
    block: int = 0,
    head: int = 0,
    dpi: int = 100,
) -> Figure:
    """Zoo masks (``ppma.masks``) seen by one query, side by side on the token grid (the paper's Figure 6).

    Every learned kind uses the same decays, those of ``stage``/``block``/``head`` of the captured model
    (``polyline_shared`` its horizontal ones for both directions); with random weights (no checkpoint),
    whose decays are all near 0, an illustrative field ``-U(0.05, 0.6)`` per token instead. ``rmt`` and
    ``none`` use their own. Each panel is ``mean_i exp(M_i[query])`` over the kind's masks
    (``ppma.masks.zoo_query_maps``), on its own colour scale.
    """
    from ..masks import zoo_query_maps

    bc = cap.block(stage, block)
    h = head_indices(bc, head)[0]
    token = cap.image.query_token(query, bc.stride)
    H, W = bc.grid
    trained = cap.weights is not None
    decays = (bc.log_alpha[h].double(), bc.log_beta[h].double()) if trained else (None, None)
    maps = zoo_query_maps(list(masks), H, W, token, *decays)
    cols = min(len(maps), 5)
    rows = -(-len(maps) // cols)
    fig, axes = _figure(rows, cols, (3.2, 2.9), dpi)
    for ax in axes.flat[len(maps) :]:
        ax.set_visible(False)
    for ax, (name, values) in zip(axes.flat, maps.items(), strict=False):
        _grid_panel(ax, values.numpy(), name, _MASK_CMAP, "mask value", token)
    source = _describe(bc, head) if trained else f"illustrative decays on the {H}x{W} grid of stage {bc.stage}"
    return _finish(fig, cap, f"zoo masks of query token {token}: {source}")


def attention_figure(
    cap: Capture,
    query: tuple[float, float] = (0.5, 0.5),
    stage: int = 2,
    block: int = 0,
    head: int | None = 0,
    dpi: int = 100,
) -> Figure:
    """A query's attention with the block's mask beside the same map with the mask removed.

    Decomposed blocks show their effective 2D map (row and column attention composed, both orders
    averaged). Top: token grid; bottom: over the image. Both maps share one colour scale.
    """
    maps = attention_maps(cap, query, stage, block, head)
    bc, token = maps["block"], maps["token"]
    vmax = float(max(maps["masked"].max(), maps["unmasked"].max()))
    fig, axes = _figure(2, 2, (4.4, 3.6), dpi)
    for col, (key, name) in enumerate((("masked", "with the polyline mask"), ("unmasked", "mask removed"))):
        _grid_panel(axes[0, col], maps[key], f"attention {name}", _ATTN_CMAP, "attention weight", token, 0, vmax)
        _overlay_panel(axes[1, col], cap, bc, maps[key], f"{name}, over the image", _ATTN_CMAP,
                       "attention weight", query, 0, vmax)  # fmt: skip
    what = "effective attention" if bc.mode == "criss_cross" else "attention"
    return _finish(fig, cap, f"{what} of query token {token}: {_describe(bc, head)}")


def decay_figure(
    cap: Capture,
    block: int = -1,
    head: int | None = None,
    stages: list[int] | None = None,
    dpi: int = 100,
) -> Figure:
    """Horizontal (alpha) and vertical (beta) decays of each stage over the image: do they follow edges?

    Args:
        block: which block of each stage (default the last).
        head: one head, or ``None`` for the mean over heads.
        stages: the stages to show (default all), one row each.
    """
    per_stage = decay_maps(cap, block, head)
    stages = list(range(len(per_stage))) if stages is None else stages
    for s in stages:
        cap.block(s, block)  # range check with the usual message
    fig, axes = _figure(len(stages), 3, (4.4, 3.4), dpi)
    for row, s in enumerate(stages):
        d = per_stage[s]
        bc = d["block"]
        ax = axes[row, 0]
        ax.imshow(cap.image.pixels, extent=cap.image.extent)
        ax.set_title(f"image (stage {s}: {bc.grid[0]}x{bc.grid[1]} tokens)", fontsize=9)
        ax.set_xlabel("x (image pixels)")
        ax.set_ylabel("y (image pixels)")
        for col, (key, name) in enumerate((("alpha", "horizontal alpha"), ("beta", "vertical beta"))):
            _overlay_panel(axes[row, col + 1], cap, bc, d[key], f"{name}, stage {s} block {bc.block}",
                           _DECAY_CMAP, key)  # fmt: skip
    heads = "mean over heads" if head is None else f"head {head}"
    return _finish(fig, cap, f"learned decay factors per token, {heads} (near 1: the mask passes; small: it cuts)")


# ---- sweep ------------------------------------------------------------------------------------------


def sweep_queries(steps: int = 6) -> list[tuple[float, float]]:
    """Query fractions on a ``steps`` x ``steps`` lattice in snake order (left to right, then back)."""
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps}")
    fractions = [(k + 0.5) / steps for k in range(steps)]
    path = []
    for r, y in enumerate(fractions):
        for x in fractions if r % 2 == 0 else fractions[::-1]:
            path.append((x, y))
    return path


def sweep_frames(
    cap: Capture,
    stage: int = 2,
    block: int = 0,
    head: int | None = 0,
    what: str = "attention",
    steps: int = 6,
    dpi: int = 80,
) -> list[np.ndarray]:
    """Frames that move the query across the image: its attention (or mask) over the image.

    Returns:
        ``steps**2`` RGB frames, each (h, w, 3) uint8 of one size.
    """
    if what not in ("attention", "mask"):
        raise ValueError(f"what: expected 'attention' or 'mask', got {what!r}")
    cap.block(stage, block)  # fail before drawing anything
    frames = []
    for query in sweep_queries(steps):
        if what == "attention":
            m = attention_maps(cap, query, stage, block, head)
            values, cmap, label = m["masked"], _ATTN_CMAP, "attention weight"
        else:
            m = mask_maps(cap, query, stage, block, head)
            values, cmap, label = m["average"], _MASK_CMAP, "mask value (H2V and V2H averaged)"
        fig, axes = _figure(1, 1, (6.0, 4.6), dpi)
        _overlay_panel(axes[0, 0], cap, m["block"], values, f"query token {m['token']}", cmap, label, query)
        _finish(fig, cap, f"{what}: {_describe(m['block'], head)}")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, duration_ms: int = 300) -> Path:
    """Write RGB frames as a looping GIF."""
    from PIL import Image

    path = Path(path)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a figure (format from the suffix, e.g. .png); the size is exactly ``figsize * dpi`` pixels."""
    path = Path(path)
    fig.savefig(path, dpi=fig.dpi)
    return path
