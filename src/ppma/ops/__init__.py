"""Attention ops behind one dispatch: ``polyline_attention`` and ``criss_cross_polyline_attention``."""

from .api import Backend, can_run, choose_backend, criss_cross_polyline_attention, polyline_attention

__all__ = ["Backend", "can_run", "choose_backend", "criss_cross_polyline_attention", "polyline_attention"]
