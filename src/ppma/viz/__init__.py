"""Pictures of what PPMA sees: per-query polyline masks, masked attention maps, learned decays, sweeps.

Start with ``run`` (model + image -> every block's q, k and log-decays), then take arrays from
``ppma.viz.maps`` or figures from ``ppma.viz.render``::

    from ppma import viz
    cap = viz.run("ppma_tiny", "photo.jpg", checkpoint="best.pth")   # no image: a scikit-image photograph
    arrays = viz.attention_maps(cap, query=(0.5, 0.4), stage=2, block=0, head=0)
    viz.save(viz.attention_figure(cap, query=(120, 80)), "attention.png")

Queries are (x, y): ints are pixels of the image as given, floats are fractions of its width / height.
Needs matplotlib and scikit-image (the ``viz`` extra).
"""

from .capture import (
    SAMPLES,
    BlockCapture,
    Capture,
    PreparedImage,
    capture_blocks,
    load_image,
    load_model,
    prepare_image,
    run,
)
from .maps import (
    attention_maps,
    criss_cross_attention_map,
    decay_maps,
    full_attention_map,
    mask_maps,
    mask_matrix,
    polyline_mask,
    query_mask_maps,
    window_log_mask,
)
from .render import (
    attention_figure,
    decay_figure,
    mask_figure,
    mask_matrix_figure,
    save,
    save_gif,
    sweep_frames,
    sweep_queries,
)

__all__ = [
    "SAMPLES",
    "BlockCapture",
    "Capture",
    "PreparedImage",
    "attention_figure",
    "attention_maps",
    "capture_blocks",
    "criss_cross_attention_map",
    "decay_figure",
    "decay_maps",
    "full_attention_map",
    "load_image",
    "load_model",
    "mask_figure",
    "mask_maps",
    "mask_matrix",
    "mask_matrix_figure",
    "polyline_mask",
    "prepare_image",
    "query_mask_maps",
    "run",
    "save",
    "save_gif",
    "sweep_frames",
    "sweep_queries",
    "window_log_mask",
]
