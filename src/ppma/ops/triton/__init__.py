"""Fused Triton kernels for PPMA attention: one file per op (``full.py``), each
kernel -> launcher -> ``autograd.Function`` -> entry function.

Importing this package imports Triton; ``ppma.ops.api`` imports it only when the ``triton``
backend is used. On a machine without a GPU the kernels run under the Triton interpreter when
``TRITON_INTERPRET=1`` is set before Triton is first imported (that is how the CPU tests run them).
"""

from . import full as _full_module  # noqa: F401  (loaded first, so ``full`` below stays the function)
from .full import full

__all__ = ["full"]
