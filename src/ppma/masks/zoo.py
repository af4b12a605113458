"""The mask zoo: every spatial mask of the paper's ablation (its Table 4) behind one name.

A mask kind says two things: where the log-decays come from (a learned decay generator, a shared
one, RMT's fixed per-head decay, or none) and which dense log-masks ``M_i`` the attention uses.
Whatever the kind, full attention is ``attn = mean_i softmax(S + M_i)`` followed by ``attn @ v``;
the functions ``<kind>_log_masks(log_alpha, log_beta)`` below return the list of ``M_i``, each
(B, heads, N, N) with tokens row-major (n = i * W + j). They define the kinds; the model runs the
polyline family through the fast ops of ``ppma.ops`` and the scan family through
``ppma.ops.log_mask_attention``.

=================  ========================  ===================================================
name               log-decays                log-masks M_i (averaged softmaxes)
=================  ========================  ===================================================
``none``           none                      one zero mask: plain softmax attention
``polyline``       learned, 2 channels       h2v M and v2h M^T (design.md §3; the default)
``h2v``            learned, 2 channels       M only
``v2h``            learned, 2 channels       M^T only
``polyline_shared``learned, 1 channel        M and M^T with log_beta = log_alpha
``rmt``            RMT's fixed gamma_h       M with constant decays = log(gamma_h) * Manhattan
``raster``         learned, 2 channels       1D mask along the row-major scan
``cross_scan``     learned, 2 channels       row-major and column-major scans, averaged
``hilbert``        learned, 2 channels       1D mask along a generalised Hilbert curve (any H x W)
``zorder``         learned, 2 channels       1D mask along the Morton (quadtree) order
=================  ========================  ===================================================

Scan masks ("the 1D mask of design.md §2 taken along the scan order"): the scan visits the
tokens in some order; the log-decay of step t (entering token ``order[t]``) is that token's
horizontal ``log_alpha`` if the step stays in its row and its vertical ``log_beta`` otherwise, so
both learned channels matter (a raster scan pays ``log_beta`` when it wraps to the next row). The
column-major half of ``cross_scan`` is the raster scan of the transposed grid with the roles
swapped (``log_beta`` within a column, ``log_alpha`` on a wrap), as v2h is h2v transposed.
The mask between two tokens is the sum of the step log-decays between their positions in the scan.
Scan masks are defined for full attention only: a 1D scan order has no row/column factorisation,
so decomposed (criss-cross) blocks refuse them (``MaskKind.full_only``).

Which path is "h2v": this library names a path from the QUERY's side. Mask row i holds the path
from query i: ``h2v`` leaves the query along its row (horizontal), then runs along the key's column
(vertical), ``M[(i,j),(k,l)] = row_i(j, l) + col_l(i, k)``. Scan-based models (2DMamba's "one-way
horizontal-to-vertical scanning") name a scan from SOURCE to TARGET: information flows from the key
to the query. Read that way our ``h2v`` path starts at the key, runs along the key's column, then
along the query's row: vertical then horizontal. The two conventions differ, so the zoo also takes
the scan convention's names: ``h2v_scan`` is our ``v2h`` and ``v2h_scan`` our ``h2v`` (``ALIASES``).
The averaged mask (``polyline``) is the same in both.

Decomposed blocks: ``polyline`` is design.md §4 (``0.5 Ah(Aw v) + 0.5 Aw(Ah v)``); ``h2v`` keeps
``Aw(Ah v)`` (column pass first, so a query's path leaves along its row: horizontal then vertical),
``v2h`` keeps ``Ah(Aw v)``; ``none``, ``rmt`` and ``polyline_shared`` run the same two-order average
with their decays (RMT itself runs the row-then-column order only). In full attention ``none`` runs
plain SDPA, and ``rmt`` one softmax: its mask is symmetric, so ``softmax(S + M)`` equals the average.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .._checks import check_log_decay, check_tensor
from .polyline import decay_dtype, unchecked_polyline_log_mask

__all__ = [
    "ALIASES",
    "MASKS",
    "RMT_STAGE_DECAYS",
    "RMT_VARIANT_DECAYS",
    "column_order",
    "raster_order",
    "MaskKind",
    "get_mask",
    "hilbert_order",
    "mask_names",
    "rmt_log_gamma",
    "scan_log_mask",
    "scan_order",
    "zoo_log_masks",
    "zoo_query_maps",
    "zorder_order",
]

Paths = Literal["both", "h2v", "v2h"]
DecaySource = Literal["learned", "shared", "fixed", "none"]
LogMasksFn = Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]

# RMT's (initial_value, heads_range) per stage, from RMT's own configurations (also in the published PPMA
# constructor's config, where PPMA ignores them): RMT-T and RMT-S use heads ranges (4, 4, 6, 6), RMT-B
# (5, 5, 6, 6); the initial value is 2 everywhere. Stages past the fourth reuse the last.
RMT_STAGE_DECAYS: tuple[tuple[float, float], ...] = ((2.0, 4.0), (2.0, 4.0), (2.0, 6.0), (2.0, 6.0))
RMT_VARIANT_DECAYS: dict[str, tuple[tuple[float, float], ...]] = {
    "tiny": RMT_STAGE_DECAYS,
    "small": RMT_STAGE_DECAYS,
    "base": ((2.0, 5.0), (2.0, 5.0), (2.0, 6.0), (2.0, 6.0)),
}


# ---- scan orders ------------------------------------------------------------------------------------


def raster_order(H: int, W: int) -> torch.Tensor:
    """Row-major order: token indices 0, 1, ..., H*W - 1."""
    return torch.arange(H * W)


def column_order(H: int, W: int) -> torch.Tensor:
    """Column-major order as row-major token indices: (0, 0), (1, 0), ..., (H-1, 0), (0, 1), ..."""
    return torch.arange(H * W).reshape(H, W).t().reshape(-1)  # transpose the index grid, read it row-major


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list[tuple[int, int]]) -> None:
    """Generalised Hilbert curve over the rectangle spanned by (ax, ay) and (bx, by) from (x, y).

    The recursive split of J. Cervený's "gilbert" algorithm: halve the long side (or, for a
    near-square block, cut into three sub-blocks with the first and last turned), preferring even
    sub-block sizes so that every step stays between neighbours.
    """
    w, h = abs(ax + ay), abs(bx + by)
    dax, day = (ax > 0) - (ax < 0), (ay > 0) - (ay < 0)  # unit step along the major axis
    dbx, dby = (bx > 0) - (bx < 0), (by > 0) - (by < 0)  # unit step along the minor axis
    if h == 1:  # a single line: walk it
        out.extend((x + t * dax, y + t * day) for t in range(w))
        return
    if w == 1:
        out.extend((x + t * dbx, y + t * dby) for t in range(h))
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    if 2 * w > 3 * h:  # long block: two halves along the major axis
        if abs(ax2 + ay2) % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        _gilbert(x, y, ax2, ay2, bx, by, out)
        _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by, out)
    else:  # up, across, down
        if abs(bx2 + by2) % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        _gilbert(x, y, bx2, by2, ax2, ay2, out)
        _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2, out)
        _gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2), out)


@functools.lru_cache(maxsize=64)
def _hilbert_list(H: int, W: int) -> tuple[int, ...]:
    points: list[tuple[int, int]] = []  # (x = column, y = row)
    if W >= H:
        _gilbert(0, 0, W, 0, 0, H, points)
    else:
        _gilbert(0, 0, 0, H, W, 0, points)
    return tuple(y * W + x for x, y in points)


def hilbert_order(H: int, W: int) -> torch.Tensor:
    """Generalised Hilbert ("gilbert") order of any H x W grid, as row-major token indices.

    Starts at (0, 0). Consecutive tokens are grid neighbours, except for at most one diagonal
    step when the longer side is odd and the shorter even (no curve of unit steps exists then
    for some such rectangles). On 2^k x 2^k grids it is the classical Hilbert curve.
    """
    return torch.tensor(_hilbert_list(H, W), dtype=torch.long)


def zorder_order(H: int, W: int) -> torch.Tensor:
    """Morton (Z / quadtree) order of any H x W grid, as row-major token indices.

    Tokens sorted by the bit interleaving of (row, column), column bit lowest: each 2x2 block is
    visited (0, 0), (0, 1), (1, 0), (1, 1), and every aligned 2^k x 2^k block is one contiguous run.
    Non-power-of-two grids take the order of the enclosing 2^k x 2^k grid with absent cells skipped.
    """
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    code = torch.zeros(H, W, dtype=torch.long)
    for b in range(max(H, W, 1).bit_length()):
        code |= ((j >> b) & 1) << (2 * b) | ((i >> b) & 1) << (2 * b + 1)
    return torch.argsort(code.reshape(-1))


_ORDERS: dict[str, Callable[[int, int], torch.Tensor]] = {
    "raster": raster_order,
    "column": column_order,
    "hilbert": hilbert_order,
    "zorder": zorder_order,
}


def scan_order(name: str, H: int, W: int) -> torch.Tensor:
    """The visiting order ``name`` (``raster``, ``column``, ``hilbert``, ``zorder``) of an H x W grid, (H*W,) long."""
    if name not in _ORDERS:
        raise ValueError(f"scan: unknown order {name!r}; valid orders are {', '.join(map(repr, _ORDERS))}")
    if H < 1 or W < 1:
        raise ValueError(f"grid: expected H, W >= 1, got {H}x{W}")
    return _ORDERS[name](H, W)


def scan_log_mask(
    log_alpha: torch.Tensor, log_beta: torch.Tensor, order: torch.Tensor, along: str = "row"
) -> torch.Tensor:
    """The 1D structured mask of design.md §2 taken along a scan order of the grid.

    The step into token ``order[t]`` has log-decay ``x[t]``: the token's ``log_alpha`` when the step
    stays in its row, else its ``log_beta`` (``along="column"`` swaps the roles: ``log_beta`` when the
    step stays in its column, else ``log_alpha``). Then ``M[a, b] = sum of x[t]`` for t between the
    scan positions of tokens a and b, lower end excluded: ``-|P[pos a] - P[pos b]|`` with ``P = cumsum(x)``.
    For the raster scan of a 2x2 grid (a = log_alpha, b = log_beta), the row of token (0, 0) is::

        key (0, 0): 0                  key (0, 1): a[0, 1]
        key (1, 0): a[0, 1] + b[1, 0]  key (1, 1): a[0, 1] + b[1, 0] + a[1, 1]

    Args:
        log_alpha: horizontal log-decays (B, heads, H, W), <= 0.
        log_beta: vertical log-decays (B, heads, H, W), <= 0.
        order: (H*W,) permutation of the row-major token indices, the visiting order.
        along: ``"row"`` or ``"column"``: which steps count as the scan's own direction.

    Returns:
        (B, heads, H*W, H*W) log-mask, symmetric, zero diagonal, <= 0, tokens row-major.
    """
    check_tensor("log_alpha", log_alpha, ndim=4)
    check_tensor("log_beta", log_beta, ndim=4)
    B, heads, H, W = log_alpha.shape
    N = H * W
    order = order.to(log_alpha.device)
    if order.shape != (N,):
        raise ValueError(
            f"order: expected a permutation of {N} tokens for a {H}x{W} grid, got shape {tuple(order.shape)}"
        )
    if along not in ("row", "column"):
        raise ValueError(f"along: expected 'row' or 'column', got {along!r}")
    same, other = (log_alpha, log_beta) if along == "row" else (log_beta, log_alpha)
    line = (order // W) if along == "row" else (order % W)  # the row (or column) of each visited token
    stays = torch.ones(N, dtype=torch.bool, device=order.device)
    stays[1:] = line[1:] == line[:-1]  # step t stays on its line; step 0 never enters a sum
    x = torch.where(stays, same.reshape(B, heads, N)[..., order], other.reshape(B, heads, N)[..., order])
    cum = torch.cumsum(x, dim=-1, dtype=decay_dtype(x))  # (B, heads, N) in scan positions
    cum = cum[..., torch.argsort(order)]  # back to token order: cum of the token's scan position
    return -(cum.unsqueeze(-1) - cum.unsqueeze(-2)).abs()


# ---- one function per kind: the dense log-masks -----------------------------------------------------


def none_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """No mask: one zero log-mask (plain softmax attention)."""
    B, heads, H, W = log_alpha.shape
    return [log_alpha.new_zeros(B, heads, H * W, H * W, dtype=decay_dtype(log_alpha))]


def polyline_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """The published 2D polyline mask: h2v ``M`` and v2h ``M^T`` (design.md §3)."""
    mask = unchecked_polyline_log_mask(log_alpha, log_beta)
    return [mask, mask.transpose(-1, -2)]


def h2v_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """One polyline path: along the query's row, then the key's column (``M``)."""
    return [unchecked_polyline_log_mask(log_alpha, log_beta)]


def v2h_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """One polyline path: along the query's column, then the key's row (``M^T``)."""
    return [unchecked_polyline_log_mask(log_alpha, log_beta).transpose(-1, -2)]


def polyline_shared_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """The polyline mask with one decay for both directions: ``log_alpha`` serves as ``log_beta`` too."""
    return polyline_log_masks(log_alpha, log_alpha)


def rmt_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """RMT's Manhattan decay: with constant decays log(gamma_h) the polyline ``M`` is
    ``log(gamma_h) * (|i - k| + |j - l|)``, symmetric, so one softmax equals the two-path average."""
    return [unchecked_polyline_log_mask(log_alpha, log_beta)]


def raster_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """The 1D mask along the row-major scan."""
    H, W = log_alpha.shape[-2:]
    return [scan_log_mask(log_alpha, log_beta, raster_order(H, W))]


def cross_scan_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """Row-major and column-major scans (the column scan is the raster scan of the transposed grid)."""
    H, W = log_alpha.shape[-2:]
    return [
        scan_log_mask(log_alpha, log_beta, raster_order(H, W)),
        scan_log_mask(log_alpha, log_beta, column_order(H, W), along="column"),
    ]


def hilbert_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """The 1D mask along the generalised Hilbert curve."""
    H, W = log_alpha.shape[-2:]
    return [scan_log_mask(log_alpha, log_beta, hilbert_order(H, W))]


def zorder_log_masks(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> list[torch.Tensor]:
    """The 1D mask along the Morton (quadtree) order."""
    H, W = log_alpha.shape[-2:]
    return [scan_log_mask(log_alpha, log_beta, zorder_order(H, W))]


@dataclass(frozen=True)
class MaskKind:
    """One zoo entry.

    Attributes:
        name: the option value, e.g. ``"hilbert"``.
        decay: ``"learned"`` (``PathDecay``, 2 channels), ``"shared"`` (1 channel used for both
            directions), ``"fixed"`` (RMT's per-head gamma, no parameters) or ``"none"``.
        paths: for the polyline family, which of h2v / v2h the fast ops run.
        full_only: a scan mask; decomposed blocks refuse it.
        log_masks: the kind's function ``(log_alpha, log_beta) -> [M_i]``, the definition.
        summary: one line for listings and figures.
    """

    name: str
    decay: DecaySource
    paths: Paths
    full_only: bool
    log_masks: LogMasksFn
    summary: str

    def op(self, mode: Literal["full", "criss_cross"]) -> tuple[str, Paths]:
        """The attention op of ``ppma.ops`` this kind runs in a ``mode`` block, and its paths.

        ``log_masks`` for scan masks (stored dense masks), ``unmasked`` for ``none`` in full attention,
        ``full`` with one path for ``rmt`` (its M is symmetric: one softmax equals the average),
        otherwise ``mode`` itself with the kind's paths.
        """
        if self.full_only:
            return "log_masks", "both"
        if mode == "full" and self.decay == "none":
            return "unmasked", "both"
        if mode == "full" and self.decay == "fixed":
            return "full", "h2v"
        return mode, self.paths


MASKS: dict[str, MaskKind] = {
    kind.name: kind
    for kind in (
        MaskKind("none", "none", "both", False, none_log_masks, "no mask (plain softmax attention)"),
        MaskKind("polyline", "learned", "both", False, polyline_log_masks, "2D polyline path, H2V + V2H (PPMA)"),
        MaskKind("h2v", "learned", "h2v", False, h2v_log_masks, "polyline path H2V only"),
        MaskKind("v2h", "learned", "v2h", False, v2h_log_masks, "polyline path V2H only"),
        MaskKind("polyline_shared", "shared", "both", False, polyline_shared_log_masks,
                 "2D polyline path, one decay for both directions"),
        MaskKind("rmt", "fixed", "both", False, rmt_log_masks, "RMT: fixed Manhattan decay gamma_h^(|di|+|dj|)"),
        MaskKind("raster", "learned", "both", True, raster_log_masks, "1D mask along the row-major scan"),
        MaskKind("cross_scan", "learned", "both", True, cross_scan_log_masks, "1D masks along both scan orders"),
        MaskKind("hilbert", "learned", "both", True, hilbert_log_masks, "1D mask along a Hilbert curve"),
        MaskKind("zorder", "learned", "both", True, zorder_log_masks, "1D mask along the Z (Morton, quadtree) order"),
    )
}  # fmt: skip


# Source -> target names (2DMamba's convention, see the module docstring) for the single-path kinds.
ALIASES: dict[str, str] = {"h2v_scan": "v2h", "v2h_scan": "h2v"}


def mask_names() -> list[str]:
    """The zoo's names, in the table's order."""
    return list(MASKS)


def get_mask(name: str | MaskKind) -> MaskKind:
    """The zoo entry called ``name`` (or an ``ALIASES`` name); a ``ValueError`` listing the valid names otherwise."""
    if isinstance(name, MaskKind):
        return name
    name = ALIASES.get(name, name)
    if name not in MASKS:
        valid = ", ".join(map(repr, [*MASKS, *ALIASES]))
        raise ValueError(f"mask: unknown name {name!r}; valid masks are {valid}")
    return MASKS[name]


# ---- RMT's fixed decay -----------------------------------------------------------------------------


def rmt_log_gamma(num_heads: int, init_value: float = 2.0, heads_range: float = 4.0) -> torch.Tensor:
    """RMT's fixed per-head log-decay (Fan et al., RMT, CVPR 2024; ``RetNetRelPos2d`` in its code).

    ``log gamma_h = log(1 - 2^(-init_value - heads_range * h / heads))`` for h = 0..heads-1, and
    RMT adds ``log gamma_h * (|i - k| + |j - l|)`` to the logits before the softmax. That is the
    polyline mask with constant ``log_alpha = log_beta = log gamma_h``: each unit step of the L-path
    adds one ``log gamma_h``, and the path has ``|j - l|`` horizontal and ``|i - k|`` vertical steps.

    Returns:
        (heads,) float64 tensor, every entry < 0.
    """
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-(2.0 ** (-init_value - heads_range * h / num_heads)))


# ---- pictures -----------------------------------------------------------------------------------------


def zoo_log_masks(
    name: str,
    H: int,
    W: int,
    log_alpha: torch.Tensor | None = None,
    log_beta: torch.Tensor | None = None,
    seed: int = 0,
) -> list[torch.Tensor]:
    """A zoo mask's dense log-masks for one H x W grid (for figures and inspection).

    Args:
        name: zoo name (see ``MASKS``).
        H, W: grid size.
        log_alpha, log_beta: (H, W) log-decays <= 0 for learned kinds; default a fixed random field
            (``-U(0.05, 0.6)`` per token from ``seed``), the same for every kind so figures compare.
            ``polyline_shared`` uses ``log_alpha`` for both; ``rmt`` and ``none`` ignore both
            (``rmt`` shows head 0 of a 4-head stage-1 layer, log gamma = log(3/4)).

    Returns:
        The kind's log-masks, each (H*W, H*W) float64, row = query; attention averages their softmaxes.
    """
    kind = get_mask(name)
    if H < 1 or W < 1:
        raise ValueError(f"grid: expected H, W >= 1, got {H}x{W}")
    gen = torch.Generator().manual_seed(seed)
    decays = []
    for arg, given in (("log_alpha", log_alpha), ("log_beta", log_beta)):
        if given is None:
            given = -(0.05 + 0.55 * torch.rand(H, W, generator=gen, dtype=torch.float64))
        check_tensor(arg, given, ndim=2)
        if tuple(given.shape) != (H, W):
            raise ValueError(f"{arg}: expected shape ({H}, {W}) for the grid, got {tuple(given.shape)}")
        check_log_decay(arg, given)
        decays.append(given.double()[None, None])  # (1, 1, H, W)
    log_alpha, log_beta = decays
    if kind.decay == "fixed":
        init_value, heads_range = RMT_STAGE_DECAYS[0]
        log_alpha = log_beta = torch.full_like(log_alpha, float(rmt_log_gamma(4, init_value, heads_range)[0]))
    elif kind.decay == "none":
        log_alpha = log_beta = torch.zeros_like(log_alpha)
    return [m[0, 0] for m in kind.log_masks(log_alpha, log_beta)]


def zoo_query_maps(
    names: list[str] | tuple[str, ...],
    H: int,
    W: int,
    token: tuple[int, int],
    log_alpha: torch.Tensor | None = None,
    log_beta: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """What one query sees under each zoo mask: ``mean_i exp(M_i[query])`` over the grid (the paper's Figure 6).

    Args:
        names: zoo names.
        H, W: grid size.
        token: the query's (row, column).
        log_alpha, log_beta, seed: as ``zoo_log_masks`` (the same decays for every learned kind).

    Returns:
        name -> (H, W) float64 map in (0, 1]: the multiplicative weight the mask puts on each key
        (averaged over the kind's masks, e.g. H2V and V2H for ``polyline``); 1 at the query.
    """
    i, j = token
    if not (0 <= i < H and 0 <= j < W):
        raise ValueError(f"token: ({i}, {j}) is outside the {H}x{W} grid")
    n = i * W + j
    out = {}
    for name in names:
        masks = zoo_log_masks(name, H, W, log_alpha, log_beta, seed)
        out[get_mask(name).name] = torch.stack([m[n].exp() for m in masks]).mean(0).reshape(H, W)
    return out
