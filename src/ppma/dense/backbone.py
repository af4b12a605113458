"""The PPMA dense-task backbone shared by detection and segmentation.

``timm.create_model(name, features_only=True)`` gives the four stage maps (B, C_i, H_i, W_i) at
strides 4, 8, 16, 32, each through its per-stage LayerNorm (design.md §6). This module adds what
both dense models need on top: a pretrained file (classification or dense checkpoint, ours or
published, through ``ppma.checkpoint.load_into``) and gradient checkpointing chosen per stage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import timm
import torch
import torch.nn as nn

from .. import models as _models  # noqa: F401  (registers the timm names)
from ..errors import one_line
from ..models.ppma import checkpoint_filter_fn

__all__ = ["checkpoint_variant", "create_backbone", "set_stage_checkpointing", "parse_stage_flags"]


def parse_stage_flags(value: bool | str | Sequence[bool] | None, num_stages: int = 4) -> list[bool]:
    """Per-stage booleans from ``True``/``False``, a list, or text: ``"all"``, ``"none"``, ``"1,2"`` (1-based).

    Raises:
        ValueError: a stage number outside 1..num_stages or a list of the wrong length.
    """
    if value is None or value is False:
        return [False] * num_stages
    if value is True:
        return [True] * num_stages
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("all", "true", "yes"):
            return [True] * num_stages
        if text in ("", "none", "false", "no"):
            return [False] * num_stages
        try:
            stages = {int(s) for s in text.split(",") if s.strip()}
        except ValueError:
            raise ValueError(
                f"grad_checkpointing: expected 'all', 'none' or stage numbers like '1,2', got {value!r}"
            ) from None
        if not stages <= set(range(1, num_stages + 1)):
            raise ValueError(f"grad_checkpointing: stages are numbered 1..{num_stages}, got {value!r}")
        return [i + 1 in stages for i in range(num_stages)]
    flags = [bool(v) for v in value]
    if len(flags) != num_stages:
        raise ValueError(f"grad_checkpointing: expected {num_stages} per-stage flags, got {len(flags)}")
    return flags


def set_stage_checkpointing(backbone: nn.Module, flags: bool | str | Sequence[bool] | None) -> list[bool]:
    """Turn gradient checkpointing on for the chosen stages of a ``features_only`` PPMA (or a bare PPMA).

    Checkpointed stages recompute their blocks' activations in the backward pass: less memory at
    high resolution (Mask R-CNN's 800x1333) for about one more forward of those stages.

    Returns:
        The per-stage flags that were set.
    """
    model = getattr(backbone, "model", backbone)  # FeatureGetterNet keeps the PPMA as .model
    stages = list(model.stages)
    flags = parse_stage_flags(flags, len(stages))
    for stage, flag in zip(stages, flags, strict=True):
        stage.grad_checkpointing = flag
    return flags


def create_backbone(
    name: str = "ppma_tiny",
    pretrained: str | os.PathLike | None = None,
    grad_checkpointing: bool | str | Sequence[bool] | None = None,
    drop_path_rate: float | None = None,
    backend: str = "auto",
) -> nn.Module:
    """A ``features_only`` PPMA returning the four normalised stage maps.

    Args:
        name: a PPMA timm name (``ppma_nano``, ``ppma_tiny``, ``ppma_small``, ``ppma_base``).
        pretrained: a checkpoint file: classification (ours or published; the per-stage LayerNorms
            keep their initial values) or dense (``state_dict`` with ``backbone.*`` keys, or ``outnorm*``);
            or a published name (``ppma_tiny.in1k``): its classification weights (``model``, not the EMA)
            from the Hugging Face cache.
        grad_checkpointing: per-stage gradient checkpointing (see ``parse_stage_flags``).
        drop_path_rate: stochastic depth; the variant's default (design.md §6) when None.
        backend: attention backend (see ``ppma.ops``).

    Returns:
        A module mapping (B, 3, H, W) to a list of four (B, C_i, H/4/2^i, W/4/2^i) maps (rounded up);
        ``.feature_info.channels()`` gives C_i.
    """
    if not name.startswith("ppma_") or name not in timm.list_models("ppma_*"):
        raise ValueError(f"backbone: expected a PPMA model, one of {timm.list_models('ppma_*')}, got {name!r}")
    kwargs = dict(features_only=True, out_indices=(0, 1, 2, 3), backend=backend)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    reading = contextlib.nullcontext()
    if pretrained and not os.path.exists(pretrained) and str(pretrained).split(".")[0] in timm.list_models("ppma_*"):
        # a published name (ppma_tiny.in1k): the classification weights from the Hugging Face cache
        from ..hub import hub_source, pretrained_file, reading_hub_file

        arch, hub_id, filename = hub_source(str(pretrained))
        if arch != name:
            raise ValueError(f"pretrained: {pretrained} holds {arch} weights, but the backbone is {name}")
        pretrained = pretrained_file(str(pretrained))
        reading = reading_hub_file(pretrained, hub_id, filename)  # a damaged download: how to fetch it again
    if pretrained:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained: no checkpoint file at {pretrained}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained)))
    try:
        with reading:
            backbone = timm.create_model(name, **kwargs)
    except ValueError as e:
        if not pretrained or "does not fit" not in str(e):
            raise
        # load_into lists up to 20 keys per kind on several lines; a file of another variant is said in one
        from ..checkpoint import extract_state_dict, read_checkpoint

        variant = checkpoint_variant(extract_state_dict(read_checkpoint(pretrained)))
        if variant is not None and variant != name:
            raise ValueError(f"pretrained: {pretrained} holds {variant} weights, but the backbone is {name} "
                             f"(--backbone {variant}, or a {name} checkpoint)") from None  # fmt: skip
        raise ValueError(f"pretrained: {pretrained} does not fit {name}: {one_line(str(e))[:300]}") from None
    set_stage_checkpointing(backbone, grad_checkpointing)
    return backbone


def checkpoint_variant(weights: dict[str, torch.Tensor]) -> str | None:
    """The registered PPMA whose stem and stage weights (names and shapes; ours or published names) are
    exactly those in ``weights``, whatever else it holds (a classifier, dense-task norms); None if none."""
    ours = checkpoint_filter_fn(weights)
    for name in timm.list_models("ppma_*"):
        with torch.device("meta"):  # shapes only: nothing allocated
            expected = {k: v.shape for k, v in timm.create_model(name).state_dict().items()
                        if k.startswith(("stem.", "stages."))}  # fmt: skip
        trunk = {k for k in ours if k.startswith(("stem.", "stages."))}
        if trunk == expected.keys() and all(ours[k].shape == s for k, s in expected.items()):
            return name
    return None
