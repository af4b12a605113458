"""ppma: Polyline Path Masked Attention (PPMA, NeurIPS 2025) for PyTorch and timm.

``import ppma`` registers ``ppma_nano``, ``ppma_tiny``, ``ppma_small`` and ``ppma_base`` in timm.
"""

from . import models  # noqa: F401  (registers the timm models)
from .decay import PathDecay
from .layers import FlatRotary, PolylineAttention
from .masks.polyline import line_log_mask, line_mask_matmul, polyline_log_mask, polyline_mask_matmul
from .models import PPMA
from .ops import Backend, criss_cross_polyline_attention, polyline_attention

__version__ = "0.1.0"

__all__ = [
    "PPMA",
    "Backend",
    "FlatRotary",
    "PathDecay",
    "PolylineAttention",
    "criss_cross_polyline_attention",
    "line_log_mask",
    "line_mask_matmul",
    "polyline_attention",
    "polyline_log_mask",
    "polyline_mask_matmul",
]
