"""Attention ops behind one dispatch.

``polyline_attention``, ``criss_cross_polyline_attention`` and ``log_mask_attention``.
"""

from .api import (
    Backend,
    can_run,
    choose_backend,
    criss_cross_polyline_attention,
    log_mask_attention,
    polyline_attention,
)

__all__ = [
    "Backend",
    "can_run",
    "choose_backend",
    "criss_cross_polyline_attention",
    "log_mask_attention",
    "polyline_attention",
]
