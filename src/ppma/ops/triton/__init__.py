"""Fused Triton kernels for PPMA attention: one file per op (``full.py``).

Importing this package does not import Triton; ``full.py`` does. On a machine without a GPU the
kernels run under the Triton interpreter when ``TRITON_INTERPRET=1`` is set before Triton is
first imported (that is how the CPU tests run them).
"""


def full(q, k, v, log_alpha, log_beta, scale: float):
    """Backend entry point (see ``ppma.ops.api``): the fused kernel of ``full.py``, imported on first use."""
    from .full import full as _full  # imports triton

    return _full(q, k, v, log_alpha, log_beta, scale)
