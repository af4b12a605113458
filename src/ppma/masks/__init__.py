"""Masks: the pure log-mask maths (``polyline``) and the zoo of mask kinds (``zoo``).

``ppma.masks.polyline``  polyline path log-masks, their fast product (Theorem 2), ``decay_dtype``
``ppma.masks.zoo``       the mask kinds of the ablation (``MASKS``, ``get_mask``), scan orders, RMT's
                         gamma table, dense log-masks per kind and the figure helpers
                         (``zoo_log_masks``, ``zoo_query_maps``)

The decay generators that feed them live in ``ppma.decay``.
"""

from .polyline import (
    decay_dtype,
    line_log_mask,
    line_mask_matmul,
    polyline_log_mask,
    polyline_mask_matmul,
)
from .zoo import (
    ALIASES,
    MASKS,
    RMT_STAGE_DECAYS,
    RMT_VARIANT_DECAYS,
    MaskKind,
    column_order,
    get_mask,
    hilbert_order,
    mask_names,
    raster_order,
    rmt_log_gamma,
    scan_log_mask,
    scan_order,
    zoo_log_masks,
    zoo_query_maps,
    zorder_order,
)

__all__ = [
    "ALIASES",
    "MASKS",
    "RMT_STAGE_DECAYS",
    "RMT_VARIANT_DECAYS",
    "MaskKind",
    "column_order",
    "decay_dtype",
    "get_mask",
    "hilbert_order",
    "line_log_mask",
    "line_mask_matmul",
    "mask_names",
    "polyline_log_mask",
    "polyline_mask_matmul",
    "raster_order",
    "rmt_log_gamma",
    "scan_log_mask",
    "scan_order",
    "zoo_log_masks",
    "zoo_query_maps",
    "zorder_order",
]
