"""Public attention ops: validate the arguments, resolve the backend (``ops/backends.py``), call it.

See ``ppma.ops.backends`` for the backends, what each can run and how ``auto`` chooses.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from .._checks import check_grid_attention, check_qkv, check_tensor
from . import cpu, dense, flex, reference
from ..masks.polyline import decay_dtype
from .backends import TRITON_INSTALLED, Backend, Op, resolve, triton_interpret

# Plain-torch backends are imported up front so that torch.compile traces the dispatch without a
# graph break (dynamo cannot trace importlib); triton is imported on first use.
_MODULES = {Backend.REFERENCE: reference, Backend.DENSE: dense, Backend.FLEX: flex, Backend.CPU: cpu}


def _module(backend: Backend):
    if backend not in _MODULES:
        _MODULES[backend] = importlib.import_module(f".{backend.value}", __package__)
    return _MODULES[backend]


# Where the triton backend can run (a GPU, or the interpreter), import it now, so that a model
# compiled before its first eager call traces the dispatch without the import's graph break.
if TRITON_INSTALLED and (torch.cuda.is_available() or triton_interpret()):
    try:
        _module(Backend.TRITON)
    except ImportError:  # a broken triton install: the triton backend reports it on first use
        pass


def _impl(backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool, paths: str = "both"):
    return _module(resolve(backend, op, q, needs_grad, paths))


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def polyline_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    log_beta: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | Backend = "auto",
    check_values: bool = True,
    paths: str = "both",
) -> torch.Tensor:
    """Full attention with the 2D polyline path mask, design.md §3.

    ``attn = 0.5 * softmax(S + M) + 0.5 * softmax(S + M^T)`` with ``S = q k^T * scale`` and
    ``M = polyline_log_mask(log_alpha, log_beta)`` (h2v; M^T is v2h); output ``attn @ v``.

    Args:
        q, k: (B, heads, H, W, d) queries and keys on the token grid.
        v: (B, heads, H, W, dv) values.
        log_alpha, log_beta: (B, heads, H, W) horizontal and vertical log-decays, <= 0.
        scale: factor on q k^T; default d^-0.5 (pass 1.0 when k is already scaled).
        backend: see the module docstring.
        check_values: check that the log-decays are finite and <= 0 (one device sync).
        paths: ``"both"`` (the published average), ``"h2v"`` (``softmax(S + M)`` only) or ``"v2h"``
            (``softmax(S + M^T)`` only); every backend runs a single path (``triton`` and ``flex`` without
            storing a mask).

    Returns:
        (B, heads, H, W, dv) in the dtype of q.
    """
    check_grid_attention(q, k, v, log_alpha, log_beta, check_values=check_values, strict=True)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = _impl(backend, "full", q, _needs_grad(q, k, v, log_alpha, log_beta), paths)
    return _full(impl, q, k, v, log_alpha, log_beta, scale, paths).to(q.dtype)


def criss_cross_polyline_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    log_beta: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | Backend = "auto",
    check_values: bool = True,
    paths: str = "both",
) -> torch.Tensor:
    """Decomposed ("criss-cross") attention with 1D masks, design.md §4.

    Row attention ``Aw_i = softmax(S_row + line_log_mask(log_alpha[i]))`` on each row i, column
    attention ``Ah_j = softmax(S_col + line_log_mask(log_beta[:, j]))`` on each column j, and
    ``out = 0.5 * Ah(Aw v) + 0.5 * Aw(Ah v)``: every token reaches every other along an L-shaped path.

    Args and Returns as ``polyline_attention``; ``paths="h2v"`` keeps ``Aw(Ah v)`` (the query's path
    leaves along its row), ``"v2h"`` keeps ``Ah(Aw v)``; every backend that runs criss-cross runs a single path.
    """
    check_grid_attention(q, k, v, log_alpha, log_beta, check_values=check_values, strict=True)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = _impl(backend, "criss_cross", q, _needs_grad(q, k, v, log_alpha, log_beta), paths)
    out = impl.criss_cross(q, k, v, log_alpha, log_beta, scale) if paths == "both" else (
        impl.criss_cross(q, k, v, log_alpha, log_beta, scale, paths=paths))
    return out.to(q.dtype)


def log_mask_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_masks: Sequence[torch.Tensor],
    *,
    scale: float | None = None,
    backend: str | Backend = "auto",
) -> torch.Tensor:
    """Attention averaged over given dense log-masks: ``mean_i softmax(S + M_i) @ v``.

    The generic form behind masks that are not polyline paths (the scan masks of ``ppma.masks``)
    and behind sequences with tokens off the grid (``ppma.integrations``). Stores the masks.

    Args:
        q, k: (B, heads, N, d) token sequences.
        v: (B, heads, N, dv).
        log_masks: one or more log-masks, each broadcastable to (B, heads, N, N), row = query.
        scale: factor on q k^T; default d^-0.5.
        backend: ``"dense"`` (SDPA per mask), ``"reference"`` or ``"auto"`` (= dense, or ``PPMA_BACKEND``).

    Returns:
        (B, heads, N, dv) in the dtype of q.
    """
    check_qkv(q, k, v, ("B", "heads", "N"))
    if len(log_masks) == 0:
        raise ValueError("log_masks: expected at least one log-mask")
    N = q.shape[2]
    for t in log_masks:
        check_tensor("log_masks", t, min_ndim=2)
        if t.shape[-2:] != (N, N):
            raise ValueError(f"log_masks: expected (..., {N}, {N}) for {N} tokens, got {tuple(t.shape)}")
    impl = _impl(backend, "log_masks", q, _needs_grad(q, k, v, *log_masks))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return impl.masked(q, k, v, list(log_masks), scale).to(q.dtype)


def _full(impl, q, k, v, log_alpha, log_beta, scale: float, paths: str) -> torch.Tensor:
    # Backends that run only both paths are never resolved for one (the registry refuses them).
    if paths == "both":
        return impl.full(q, k, v, log_alpha, log_beta, scale)
    return impl.full(q, k, v, log_alpha, log_beta, scale, paths=paths)


def unmasked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | Backend = "auto",
) -> torch.Tensor:
    """Plain softmax attention on the token grid, ``softmax(q k^T * scale) @ v`` (the ``none`` mask).

    Backends with their own unmasked op run it (``dense``: SDPA, what ``auto`` picks; ``cpu``,
    ``reference``); ``triton`` and ``flex`` run full attention with zero log-decays (both paths are
    then one softmax).

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, dv).
        scale: factor on q k^T; default d^-0.5.
        backend: see ``ppma.ops.backends``.

    Returns:
        (B, heads, H, W, dv) in the dtype of q.
    """
    zeros = q.new_zeros(q.shape[:4], dtype=decay_dtype(q))
    check_grid_attention(q, k, v, zeros, zeros, check_values=False, strict=True)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = _impl(backend, "unmasked", q, _needs_grad(q, k, v))
    if hasattr(impl, "unmasked"):
        return impl.unmasked(q, k, v, scale).to(q.dtype)
    return impl.full(q, k, v, zeros, zeros, scale).to(q.dtype)
