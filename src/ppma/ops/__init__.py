"""Attention ops behind one dispatch (backends: ``ppma.ops.backends``).

``polyline_attention``, ``criss_cross_polyline_attention``, ``log_mask_attention`` and ``unmasked_attention``.
"""

from .api import (
    criss_cross_polyline_attention,
    log_mask_attention,
    polyline_attention,
    unmasked_attention,
)
from .backends import Backend, can_run, choose_backend

__all__ = [
    "Backend",
    "can_run",
    "choose_backend",
    "criss_cross_polyline_attention",
    "log_mask_attention",
    "polyline_attention",
    "unmasked_attention",
]
