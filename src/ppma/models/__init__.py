"""Model families; importing this registers them in timm."""

from .ppma import PPMA
from .published import checkpoint_filter_fn, published_state_dict

__all__ = ["PPMA", "checkpoint_filter_fn", "published_state_dict"]
