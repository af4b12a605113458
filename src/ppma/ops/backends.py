"""The backend registry: what each backend can run, and the one rule ``auto`` follows.

Backends (``backend=``):
    reference  the oracle: forms the mask, explicit softmaxes (ops/reference.py)
    dense      stored mask + ``scaled_dot_product_attention`` (ops/dense.py)
    flex       FlexAttention, mask formed on the fly from prefix sums; full attention, any paths (ops/flex.py)
    cpu        explicit batched matmuls, each score matrix formed once; the fastest on CPU (ops/cpu.py)
    triton     fused Triton kernels, O(N) memory: full attention in one pass for both softmaxes
               (ops/triton/full.py), criss-cross from a fused line-attention kernel, every path
               (ops/triton/criss_cross.py); CUDA (or CPU under ``TRITON_INTERPRET=1``)
    auto       ``choose_backend``: the fastest that can run for the device, dtype, size, op and paths

Ops: ``full`` and ``criss_cross`` (polyline attention, ``paths`` both / h2v / v2h), ``log_masks``
(averaged softmaxes over given dense log-masks) and ``unmasked`` (plain softmax attention; backends
without their own run ``full`` with zero log-decays, where both paths are one softmax).

Each backend declares what it cannot run in its ``_why_not_*`` function: ``None`` when it can, else
the reason. ``PPMA_BACKEND`` (read in ``env_backend`` only) replaces ``auto`` wherever that backend
can run the op (for benchmarks); elsewhere ``auto``'s rule applies.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from typing import Literal

import torch

Op = Literal["full", "criss_cross", "log_masks", "unmasked"]
OPS = ("full", "criss_cross", "log_masks", "unmasked")
PATHS = ("both", "h2v", "v2h")

# ---- limits, each written once ----------------------------------------------------------------------
TRITON_MAX_WIDTH = 256  # ops/triton/full.py keeps a whole (padded) grid row in one tile
TRITON_MAX_LINE = 4096  # ops/triton/criss_cross.py: rows (W) and columns (H) at most this long
# auto on CUDA: decomposed attention whose stored 1D masks (dense) would pass this goes to triton (O(N d) memory)
CUDA_DENSE_LINE_MASKS_MAX_BYTES = 2**30


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

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # once: torch.compile cannot trace find_spec


def _has_flex_attention() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_HAS_FLEX = _has_flex_attention()


def env_backend() -> Backend | None:
    """The backend ``PPMA_BACKEND`` names, or None: the one place the variable is read."""
    name = os.environ.get("PPMA_BACKEND")
    return Backend.parse(name) if name else None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ---- what each backend cannot run: None, or why -------------------------------------------------------


def _why_not_everywhere(op: Op, paths: str, q: torch.Tensor, needs_grad: bool) -> str | None:
    return None  # reference and dense: every op, path, device and dtype


def _why_not_cpu(op: Op, paths: str, q: torch.Tensor, needs_grad: bool) -> str | None:
    if op == "log_masks":
        return "cpu runs the polyline ops; log-mask attention runs on 'dense' or 'reference'"
    return None


def _why_not_flex(op: Op, paths: str, q: torch.Tensor, needs_grad: bool) -> str | None:
    if not _HAS_FLEX:
        return f"torch {torch.__version__} has no FlexAttention"
    if op not in ("full", "unmasked"):
        return "flex implements full attention only; use 'dense' or 'reference' for criss-cross"
    if q.device.type == "cpu" and needs_grad:
        return "FlexAttention has no backward on CPU"
    if q.dtype == torch.float64 and q.device.type == "cuda":
        return "FlexAttention kernels do not take float64 on CUDA"
    return None


def _why_not_triton(op: Op, paths: str, q: torch.Tensor, needs_grad: bool) -> str | None:
    if not TRITON_INSTALLED:
        return "triton is not installed (pip install 'ppma[triton]')"
    interpret = triton_interpret()
    if q.device.type != "cuda" and not (interpret and q.device.type == "cpu"):
        return f"triton kernels need a CUDA device (got {q.device.type}; CPU runs need TRITON_INTERPRET=1)"
    if q.dtype == torch.float64 and not interpret:
        return "the triton kernel takes float32/bfloat16/float16 on CUDA (float64 only under the interpreter)"
    if op == "log_masks":
        return "triton forms polyline masks from prefix sums; log-mask attention runs on 'dense' or 'reference'"
    if op == "criss_cross" and max(q.shape[2], q.shape[3]) > TRITON_MAX_LINE:
        grid = f"{q.shape[2]}x{q.shape[3]}"
        return f"grid {grid} has a line longer than the triton kernel's limit of {TRITON_MAX_LINE}"
    if op in ("full", "unmasked") and q.shape[3] > TRITON_MAX_WIDTH:
        return f"grid width {q.shape[3]} exceeds the triton kernel's limit of {TRITON_MAX_WIDTH}"
    return None


_WHY_NOT = {
    Backend.REFERENCE: _why_not_everywhere,
    Backend.DENSE: _why_not_everywhere,
    Backend.CPU: _why_not_cpu,
    Backend.FLEX: _why_not_flex,
    Backend.TRITON: _why_not_triton,
}


def why_not(backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool, paths: str = "both") -> str | None:
    """None when ``backend`` can run ``op`` (with ``paths``) on tensors like ``q``, else the reason."""
    backend = Backend.parse(backend)
    if backend == Backend.AUTO:
        return "auto is not a concrete backend"
    return _WHY_NOT[backend](op, paths, q, needs_grad)


def can_run(
    backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool, paths: str = "both"
) -> tuple[bool, str]:
    """Whether ``backend`` can run ``op`` on tensors like ``q``; the reason when it cannot."""
    why = why_not(backend, op, q, needs_grad, paths)
    return why is None, why or ""


# ---- auto ------------------------------------------------------------------------------------------------


def _line_mask_bytes(q: torch.Tensor) -> int:
    """Bytes of the float32 row and column masks that ``dense`` stores for decomposed attention."""
    B, heads, H, W = q.shape[:4]
    return 4 * B * heads * (H * W * W + W * H * H)


def choose_backend(op: Op, q: torch.Tensor, needs_grad: bool, paths: str = "both") -> Backend:
    """The backend ``auto`` means for this op, paths, device, dtype and size: the one rule.

    ``PPMA_BACKEND`` wins where it can run the op. Log-mask and unmasked attention go to ``dense``
    (SDPA). On CUDA, full attention goes to triton, else flex, where they can run; decomposed
    attention whose stored line masks would pass ``CUDA_DENSE_LINE_MASKS_MAX_BYTES`` to triton; the
    rest to dense. On CPU ``cpu`` for both masked ops, with or without a backward: its inference path
    (cache-sized slices, no stored mask) beats SDPA with a stored mask at every size measured
    (BENCHMARKS.md).
    """
    override = env_backend()
    if override is not None and why_not(override, op, q, needs_grad, paths) is None:
        return override
    if op in ("log_masks", "unmasked"):
        return Backend.DENSE
    on_cuda = q.device.type == "cuda"
    if on_cuda and op == "full":
        # One fused pass for both softmaxes; FlexAttention needs two calls (benchmarks/bench_ops.py).
        for backend in (Backend.TRITON, Backend.FLEX):
            if why_not(backend, op, q, needs_grad, paths) is None:
                return backend
    if on_cuda and op == "criss_cross" and _line_mask_bytes(q) > CUDA_DENSE_LINE_MASKS_MAX_BYTES:
        # Not yet timed against dense on a GPU; chosen for memory: at a 2048x2048 input stage 1 alone
        # would store 4 GiB of masks (4 heads, 512^3 per direction), the fused kernel none.
        if why_not(Backend.TRITON, op, q, needs_grad, paths) is None:
            return Backend.TRITON
    if q.device.type == "cpu":
        return Backend.CPU
    return Backend.DENSE


def resolve(backend: str | Backend, op: Op, q: torch.Tensor, needs_grad: bool, paths: str = "both") -> Backend:
    """The concrete backend that runs ``op``: ``auto`` chosen, any other checked (a ValueError saying why not)."""
    if paths not in PATHS:
        raise ValueError(f"paths: expected one of {', '.join(map(repr, PATHS))}, got {paths!r}")
    backend = Backend.parse(backend)
    if backend == Backend.AUTO:
        backend = choose_backend(op, q, needs_grad, paths)
    why = why_not(backend, op, q, needs_grad, paths)
    if why is not None:
        what = f"{op} attention" + (f" (paths={paths!r})" if paths != "both" else "")
        raise ValueError(f"backend: {backend.value!r} cannot run {what} here: {why}")
    return backend
