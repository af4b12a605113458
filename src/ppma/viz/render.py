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
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .capture import BlockCapture, Capture
from .maps import LogMaskFn, attention_maps, decay_maps, head_indices, mask_maps, mask_matrix, polyline_mask

__all__ = [
    "attention_figure",
    "attention_norm",
    "decay_norm",
    "decay_figure",
    "mask_figure",
    "mask_matrix_figure",
    "save",
    "save_gif",
    "sweep_frames",
    "sweep_maps",
    "sweep_queries",
    "zoo_mask_figure",
]  # fmt: skip

_OVERLAY_ALPHA = 0.6
_MASK_CMAP = "viridis"
_ATTN_CMAP = "inferno"
_DECAY_CMAP = "magma"
# Attention maps span orders of magnitude (a few tokens near 1e-1, most near 1e-4): a log scale down to
# this fraction of the largest weight separates the small values that matter.
_ATTN_LOG_RANGE = 1e-4


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
    norm: Normalize | None = None,
) -> None:
    """A heatmap over the token grid (one cell per token), query token outlined; ``norm`` fixes the scale."""
    im = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
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
    norm: Normalize | None = None,
) -> None:
    """A token map laid over the image; axes in the original image's pixels, query marked."""
    image = cap.image
    ax.imshow(image.pixels, extent=image.extent)
    # The grid covers the padded image: a token spans stride / scale original pixels.
    sy, sx = image.scale
    H, W = values.shape
    im = ax.imshow(values, cmap=cmap, norm=norm, alpha=_OVERLAY_ALPHA, interpolation="nearest",
                   extent=(0, W * bc.stride / sx, H * bc.stride / sy, 0))  # fmt: skip
    left, right, bottom, top = image.extent
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (image pixels)")
    ax.set_ylabel("y (image pixels)")
    if query is not None:
        _query_marker(ax, *image.query_pixel(query))
    ax.figure.colorbar(im, ax=ax, shrink=0.85, label=label)


def _query_marker(ax: Axes, x: float, y: float) -> None:
    """A ring in white over a wider one in black: visible on dark, light and coloured images alike."""
    ax.plot([x], [y], marker="o", ms=11, mfc="none", mec="black", mew=3.5, zorder=5)
    ax.plot([x], [y], marker="o", ms=11, mfc="none", mec="white", mew=1.5, zorder=6)


# ---- colour scales ----------------------------------------------------------------------------------


def attention_norm(maps: list[np.ndarray]) -> LogNorm:
    """One log scale for attention maps: from ``_ATTN_LOG_RANGE`` of the largest weight to the largest."""
    vmax = float(max(np.max(m) for m in maps))
    vmax = vmax if vmax > 0 else 1.0
    return LogNorm(vmin=vmax * _ATTN_LOG_RANGE, vmax=vmax, clip=True)


def _attention_label(norm: LogNorm) -> str:
    return f"attention weight (log scale, {norm.vmin:.1e} to {norm.vmax:.1e})"


def decay_norm(per_stage: list[dict], stages: list[int]) -> Normalize:
    """One linear scale for every decay panel: the range the shown decays span, inside [0, 1]."""
    values = [per_stage[s][k] for s in stages for k in ("alpha", "beta")]
    low = max(0.0, float(min(np.min(v) for v in values)))
    high = min(1.0, float(max(np.max(v) for v in values)))
    return Normalize(vmin=low, vmax=high if high > low else low + 1e-6)


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
    averaged). Top: token grid; bottom: over the image. Both maps share one logarithmic colour scale
    (``attention_norm``), so weights a thousand times below the peak still show.
    """
    maps = attention_maps(cap, query, stage, block, head)
    bc, token = maps["block"], maps["token"]
    norm = attention_norm([maps["masked"], maps["unmasked"]])
    label = _attention_label(norm)
    fig, axes = _figure(2, 2, (4.4, 3.6), dpi)
    for col, (key, name) in enumerate((("masked", "with the polyline mask"), ("unmasked", "mask removed"))):
        _grid_panel(axes[0, col], maps[key], f"attention {name}", _ATTN_CMAP, label, token, norm)
        _overlay_panel(axes[1, col], cap, bc, maps[key], f"{name}, over the image", _ATTN_CMAP, label, query, norm)
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
    norm = decay_norm(per_stage, stages)
    fig, axes = _figure(len(stages), 3, (4.4, 3.4), dpi)
    # The image once, top left; the decay panels are laid over it, so it needs no repeating.
    ax = axes[0, 0]
    ax.imshow(cap.image.pixels, extent=cap.image.extent)
    ax.set_title("image", fontsize=9)
    ax.set_xlabel("x (image pixels)")
    ax.set_ylabel("y (image pixels)")
    for ax in axes[1:, 0]:
        ax.set_visible(False)
    source = "learned" if cap.weights is not None else "random-weight"
    for row, s in enumerate(stages):
        d = per_stage[s]
        bc = d["block"]
        for col, (key, name) in enumerate((("alpha", "horizontal alpha"), ("beta", "vertical beta"))):
            title = f"{name}, stage {s} ({bc.grid[0]}x{bc.grid[1]} tokens), block {bc.block}"
            label = f"{key} (shared scale {norm.vmin:.3f} to {norm.vmax:.3f})"
            _overlay_panel(axes[row, col + 1], cap, bc, d[key], title, _DECAY_CMAP, label, norm=norm)
    heads = "mean over heads" if head is None else f"head {head}"
    return _finish(fig, cap, f"{source} decay factors per token, {heads} (near 1: the mask passes; small: it cuts)")


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
    queries, maps, norm = sweep_maps(cap, stage, block, head, what, steps)
    if what == "attention":
        cmap, label = _ATTN_CMAP, _attention_label(norm)
    else:
        cmap, label = _MASK_CMAP, "mask value, H2V and V2H averaged (one scale for all frames)"
    frames = []
    for query, (m, values) in zip(queries, maps, strict=True):
        fig, axes = _figure(1, 1, (6.0, 4.6), dpi)
        _overlay_panel(axes[0, 0], cap, m["block"], values, f"query token {m['token']}", cmap, label, query, norm)
        _finish(fig, cap, f"{what}: {_describe(m['block'], head)}")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return frames


def sweep_maps(
    cap: Capture, stage: int, block: int, head: int | None, what: str, steps: int
) -> tuple[list[tuple[float, float]], list[tuple[dict, np.ndarray]], Normalize]:
    """The queries of a sweep, each frame's maps and values, and the ONE colour scale all frames share
    (log for attention, as ``attention_norm``; linear from 0 to the largest value for the mask)."""
    queries = sweep_queries(steps)
    maps = []
    for query in queries:
        if what == "attention":
            m = attention_maps(cap, query, stage, block, head)
            maps.append((m, m["masked"]))
        else:
            m = mask_maps(cap, query, stage, block, head)
            maps.append((m, m["average"]))
    values = [v for _, v in maps]
    if what == "attention":
        return queries, maps, attention_norm(values)
    return queries, maps, Normalize(vmin=0.0, vmax=float(max(np.max(v) for v in values)))


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, duration_ms: int = 300) -> Path:
    """Write RGB frames as a looping GIF."""
    from PIL import Image

    from ..checkpoint import atomic_write

    path = Path(path)
    images = [Image.fromarray(f) for f in frames]
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=duration_ms, loop=0))  # fmt: skip
    return path


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a figure (format from the suffix, e.g. .png), atomically (a temporary file beside it, renamed: an
    interrupted run never leaves half a picture); the size is exactly ``figsize * dpi`` pixels."""
    from ..checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=fig.dpi, format=path.suffix.lstrip(".").lower() or None))
    return path
