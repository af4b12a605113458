"""Fused Triton kernels for PPMA attention: one file per op (``full.py``, ``criss_cross.py``),
each kernel -> launcher, registered as a ``torch.library`` custom op with its backward -> entry function.

Importing this package imports Triton; ``ppma.ops.api`` imports it only when the ``triton``
backend is used. On a machine without a GPU the kernels run under the Triton interpreter when
``TRITON_INTERPRET=1`` is set before Triton is first imported (that is how the CPU tests run them).
"""

# Submodules first, so that ``criss_cross`` and ``full`` below are the functions, not the modules.
from . import criss_cross as _criss_cross_module  # noqa: F401
from . import full as _full_module  # noqa: F401
from .criss_cross import criss_cross
from .full import full

__all__ = ["criss_cross", "full"]
