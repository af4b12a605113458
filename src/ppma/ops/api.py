"""Public attention ops: validate the arguments, resolve the backend, call it.

Backends (``backend=``):
    reference  the oracle: forms the mask, explicit softmaxes (ops/reference.py)
    dense      stored mask + ``scaled_dot_product_attention`` (ops/dense.py)
    flex       FlexAttention, mask formed on the fly from prefix sums; full attention only (ops/flex.py)
    cpu        explicit batched matmuls, each score matrix formed once; the fastest on CPU (ops/cpu.py)
    triton     fused Triton kernels, O(N) memory: full attention in one pass for both softmaxes
               (ops/triton/full.py), criss-cross from a fused line-attention kernel
               (ops/triton/criss_cross.py); CUDA (or CPU under ``TRITON_INTERPRET=1``)
    auto       the fastest that can run for the device, dtype and op (see ``choose_backend``)

The environment variable ``PPMA_BACKEND`` overrides ``auto`` everywhere (for benchmarks).
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Literal

import torch

from .._checks import check_log_decay, check_not_empty, check_same_dtype, check_tensor
from . import cpu, dense, flex, reference

Op = Literal["full", "criss_cross"]


class Backend(str, enum.Enum):
    AUTO = "auto"
    REFERENCE = "reference"
    DENSE = "dense"
    FLEX = "flex"
    TRITON = "triton"
    CPU = "cpu"

    @classmethod
    def parse(cls, name: str | Backend) -> Backend:
        # A dict lookup, not ``cls(name)``: dynamo in torch 2.11 breaks the graph on Enum construction.
        if isinstance(name, cls):
            return name
        backend = _BACKENDS_BY_NAME.get(name)
        if backend is None:
            valid = ", ".join(repr(b.value) for b in cls)
            raise ValueError(f"backend: unknown name {name!r}; valid backends are {valid}")
        return backend


_BACKENDS_BY_NAME = {b.value: b for b in Backend}


def _has_flex_attention() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def can_run(backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool) -> tuple[bool, str]:
    """Whether ``backend`` can run ``op`` on tensors like ``q``; the reason when it cannot."""
    backend = Backend.parse(backend)
    if backend in (Backend.REFERENCE, Backend.DENSE, Backend.CPU):
        return True, ""
    if backend == Backend.FLEX:
        if not _has_flex_attention():
            return False, f"torch {torch.__version__} has no FlexAttention"
        if op != "full":
            return False, "flex implements full attention only; use 'dense' or 'reference' for criss-cross"
        if q.device.type == "cpu" and needs_grad:
            return False, "FlexAttention has no backward on CPU"
        if q.dtype == torch.float64 and q.device.type == "cuda":
            return False, "FlexAttention kernels do not take float64 on CUDA"
        return True, ""
    if backend == Backend.TRITON:
        return _can_run_triton(op, q)
    return False, "auto is not a concrete backend"


TRITON_MAX_WIDTH = 256  # ops/triton/full.py keeps a whole (padded) grid row in one tile
TRITON_MAX_LINE = 4096  # ops/triton/criss_cross.py: rows (W) and columns (H) at most this long


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # once: torch.compile cannot trace find_spec


def _can_run_triton(op: Op, q: torch.Tensor) -> tuple[bool, str]:
    if not _TRITON_INSTALLED:
        return False, "triton is not installed (pip install 'ppma[triton]')"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if q.device.type != "cuda" and not (interpret and q.device.type == "cpu"):
        return False, f"triton kernels need a CUDA device (got {q.device.type}; CPU runs need TRITON_INTERPRET=1)"
    if q.dtype == torch.float64 and not interpret:
        return False, "the triton kernel takes float32/bfloat16/float16 on CUDA (float64 only under the interpreter)"
    if op == "criss_cross" and max(q.shape[2], q.shape[3]) > TRITON_MAX_LINE:
        grid = f"{q.shape[2]}x{q.shape[3]}"
        return False, f"grid {grid} has a line longer than the triton kernel's limit of {TRITON_MAX_LINE}"
    if op == "full" and q.shape[3] > TRITON_MAX_WIDTH:
        return False, f"grid width {q.shape[3]} exceeds the triton kernel's limit of {TRITON_MAX_WIDTH}"
    return True, ""


CPU_FULL_MAX_TOKENS = 224  # auto on CPU, inference: full attention above this many tokens goes to dense,
CPU_DENSE_MASK_MAX_BYTES = 2**30  # unless its stored (B, heads, N, N) float32 mask would pass this
# auto on CUDA: decomposed attention whose stored 1D masks (dense) would pass this goes to triton (O(N d) memory)
CUDA_DENSE_LINE_MASKS_MAX_BYTES = 2**30


def _full_mask_bytes(q: torch.Tensor) -> int:
    """Bytes of the float32 (B, heads, N, N) mask that ``dense`` stores for full attention."""
    B, heads, H, W = q.shape[:4]
    return 4 * B * heads * (H * W) ** 2


def _line_mask_bytes(q: torch.Tensor) -> int:
    """Bytes of the float32 row and column masks that ``dense`` stores for decomposed attention."""
    B, heads, H, W = q.shape[:4]
    return 4 * B * heads * (H * W * W + W * H * H)


def choose_backend(op: Op, q: torch.Tensor, needs_grad: bool) -> Backend:
    """The backend ``auto`` means for this op, device, dtype and size."""
    override = os.environ.get("PPMA_BACKEND")
    if override:
        return Backend.parse(override)
    if q.device.type == "cuda" and op == "full":
        # One fused pass for both softmaxes; FlexAttention needs two calls (benchmarks/bench_ops.py).
        for backend in (Backend.TRITON, Backend.FLEX):
            if can_run(backend, op, q, needs_grad)[0]:
                return backend
    if q.device.type == "cuda" and op == "criss_cross" and _line_mask_bytes(q) > CUDA_DENSE_LINE_MASKS_MAX_BYTES:
        # Not yet timed against dense on a GPU; chosen for memory: at a 2048x2048 input stage 1 alone
        # would store 4 GiB of masks (4 heads, 512^3 per direction), the fused kernel none.
        if can_run(Backend.TRITON, op, q, needs_grad)[0]:
            return Backend.TRITON
    if q.device.type == "cpu":
        # Measured on 1 and 2 cores (BENCHMARKS.md): explicit matmuls beat SDPA with a float mask for
        # decomposed attention, for every full-attention backward, and for small full-attention
        # forwards; SDPA's fused softmax wins the forward from N ~ 250.
        # (dense stores every head's N x N mask at once; cpu runs within a fixed budget: see ops/cpu.py)
        large = q.shape[2] * q.shape[3] > CPU_FULL_MAX_TOKENS
        if op == "full" and not needs_grad and large and _full_mask_bytes(q) <= CPU_DENSE_MASK_MAX_BYTES:
            return Backend.DENSE
        return Backend.CPU
    return Backend.DENSE


def _resolve(backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool):
    backend = Backend.parse(backend)
    if backend == Backend.AUTO:
        backend = choose_backend(op, q, needs_grad)
    ok, why = can_run(backend, op, q, needs_grad)
    if not ok:
        raise ValueError(f"backend: {backend.value!r} cannot run {op} attention here: {why}")
    return _module(backend)


# Plain-torch backends are imported up front so that torch.compile traces the dispatch without a
# graph break (dynamo cannot trace importlib); triton is imported on first use.
_MODULES = {Backend.REFERENCE: reference, Backend.DENSE: dense, Backend.FLEX: flex, Backend.CPU: cpu}


def _module(backend: Backend):
    if backend not in _MODULES:
        _MODULES[backend] = importlib.import_module(f".{backend.value}", __package__)
    return _MODULES[backend]


# Where the triton backend can run (a GPU, or the interpreter), import it now, so that a model
# compiled before its first eager call traces the dispatch without the import's graph break.
if _TRITON_INSTALLED and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    try:
        _module(Backend.TRITON)
    except ImportError:  # a broken triton install: the triton backend reports it on first use
        pass


def _check_inputs(q, k, v, log_alpha, log_beta, check_values: bool) -> None:
    check_tensor("q", q, ndim=5)
    check_tensor("k", k, ndim=5)
    check_tensor("v", v, ndim=5)
    if not torch.is_autocast_enabled(q.device.type):  # under autocast the products run in one dtype anyway
        check_same_dtype("q", q, "k", k)
        check_same_dtype("q", q, "v", v)
    for name, t in (("q", q), ("v", v)):
        check_not_empty(name, t)
    if k.shape != q.shape:
        raise ValueError(f"k: shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} (B, heads, H, W, d)")
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(
            f"v: leading shape {tuple(v.shape[:4])} does not match q's (B, heads, H, W) {tuple(q.shape[:4])}"
        )
    for name, t in (("log_alpha", log_alpha), ("log_beta", log_beta)):
        check_tensor(name, t, ndim=4)
        if t.shape != q.shape[:4]:
            raise ValueError(f"{name}: shape {tuple(t.shape)} does not match q's (B, heads, H, W) {tuple(q.shape[:4])}")
        check_log_decay(name, t, check_values)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


PATHS = ("both", "h2v", "v2h")


def _resolve_paths(backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool, paths: str):
    """``_resolve`` for ``paths="both"``; a single path runs on the stored-mask backends (and triton criss-cross)."""
    if paths not in PATHS:
        raise ValueError(f"paths: expected one of {', '.join(map(repr, PATHS))}, got {paths!r}")
    if paths == "both":
        return _resolve(backend, op, q, needs_grad), {}
    backend = Backend.parse(backend)
    if backend == Backend.AUTO:
        backend = Backend.REFERENCE if os.environ.get("PPMA_BACKEND") == "reference" else Backend.DENSE
    if backend == Backend.TRITON and op == "criss_cross":
        return _resolve(backend, op, q, needs_grad), {"paths": paths}
    if backend not in (Backend.REFERENCE, Backend.DENSE):
        raise ValueError(
            f"backend: {backend.value!r} runs paths='both' only; use 'dense' or 'reference' for paths={paths!r}"
        )
    return _module(backend), {"paths": paths}


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
    """Full attention with the 2D polyline path mask, SPEC section 3.

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
            (``softmax(S + M^T)`` only); a single path runs on ``dense`` or ``reference``.

    Returns:
        (B, heads, H, W, dv) in the dtype of q.
    """
    _check_inputs(q, k, v, log_alpha, log_beta, check_values)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl, extra = _resolve_paths(backend, "full", q, _needs_grad(q, k, v, log_alpha, log_beta), paths)
    return impl.full(q, k, v, log_alpha, log_beta, scale, **extra).to(q.dtype)


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
    """Decomposed ("criss-cross") attention with 1D masks, SPEC section 4.

    Row attention ``Aw_i = softmax(S_row + line_log_mask(log_alpha[i]))`` on each row i, column
    attention ``Ah_j = softmax(S_col + line_log_mask(log_beta[:, j]))`` on each column j, and
    ``out = 0.5 * Ah(Aw v) + 0.5 * Aw(Ah v)``: every token reaches every other along an L-shaped path.

    Args and Returns as ``polyline_attention``; ``paths="h2v"`` keeps ``Aw(Ah v)`` (the query's path
    leaves along its row), ``"v2h"`` keeps ``Ah(Aw v)``; a single path runs on ``dense``,
    ``reference`` or ``triton``.
    """
    _check_inputs(q, k, v, log_alpha, log_beta, check_values)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl, extra = _resolve_paths(backend, "criss_cross", q, _needs_grad(q, k, v, log_alpha, log_beta), paths)
    return impl.criss_cross(q, k, v, log_alpha, log_beta, scale, **extra).to(q.dtype)


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
        backend: ``"dense"`` (SDPA per mask), ``"reference"`` or ``"auto"`` (= dense).

    Returns:
        (B, heads, N, dv) in the dtype of q.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    if not torch.is_autocast_enabled(q.device.type):
        check_same_dtype("q", q, "k", k)
        check_same_dtype("q", q, "v", v)
    for name, t in (("q", q), ("v", v)):
        check_not_empty(name, t)
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"k, v: shapes {tuple(k.shape)}, {tuple(v.shape)} do not match q {tuple(q.shape)} (B, heads, N, d)"
        )
    if len(log_masks) == 0:
        raise ValueError("log_masks: expected at least one log-mask")
    N = q.shape[2]
    for t in log_masks:
        check_tensor("log_masks", t, min_ndim=2)
        if t.shape[-2:] != (N, N):
            raise ValueError(f"log_masks: expected (..., {N}, {N}) for {N} tokens, got {tuple(t.shape)}")
    backend = Backend.parse(backend)
    if backend == Backend.AUTO:
        backend = Backend.REFERENCE if os.environ.get("PPMA_BACKEND") == "reference" else Backend.DENSE
    if backend not in (Backend.REFERENCE, Backend.DENSE):
        raise ValueError(f"backend: {backend.value!r} cannot run log-mask attention; use 'dense' or 'reference'")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = _module(backend)
    return impl.masked(q, k, v, list(log_masks), scale).to(q.dtype)
