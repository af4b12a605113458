"""The polyline mask (or any zoo mask) inside attention layers that are not PPMA's.

``ppma.integrations.vit`` turns a timm ``VisionTransformer`` into its PPMA variant in place and
registers ``deit_tiny_ppma``; ``masked_token_attention`` applies a zoo mask to any q, k, v whose
tokens are an optional run of prefix tokens followed by a row-major H x W grid. ``ppma`` itself
never imports this package: ``import ppma.integrations`` registers the models.
"""

from .vit import PolylineViTAttention, masked_token_attention, to_ppma

__all__ = ["PolylineViTAttention", "masked_token_attention", "to_ppma"]
