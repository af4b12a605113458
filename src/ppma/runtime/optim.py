"""The one weight-decay policy and the dense recipes' learning-rate schedules (torch's schedulers, chained).

Weight decay is never applied to parameters that set a scale or an offset rather than a feature: 1-D
parameters (norm weights and biases), biases, and the PPMA decay parameters ``dt_bias`` and ``A_log``
(decaying them would pull every learned decay rate towards one value). The layer-scale gammas
((1, 1, 1, C) tensors named ``*.gamma``) are the one switch: the published classification recipe
decays them (timm's optimizer factory sees a 4-D tensor), the published dense recipes (MMDetection /
MMSegmentation configs) exempt them; ``decay_layer_scale`` keeps each recipe as published.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR, PolynomialLR

__all__ = ["NO_DECAY_SUFFIXES", "param_groups", "warmup_multistep", "warmup_poly"]

NO_DECAY_SUFFIXES = (".bias", "dt_bias", "A_log")  # besides every 1-D parameter
LAYER_SCALE_SUFFIX = ".gamma"


def param_groups(model: nn.Module, weight_decay: float, decay_layer_scale: bool) -> list[dict]:
    """Two parameter groups, ``[no decay, decay]``: the policy of this module's docstring.

    Args:
        model: the trainable model (parameters with ``requires_grad=False`` are left out).
        weight_decay: the decay of the second group.
        decay_layer_scale: True: layer-scale gammas are decayed (classification, as published);
            False: they are not (detection and segmentation, as published).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)
        if exempt or (not decay_layer_scale and name.endswith(LAYER_SCALE_SUFFIX)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=no_decay, weight_decay=0.0), dict(params=decay, weight_decay=weight_decay)]


def warmup_multistep(
    optimizer: torch.optim.Optimizer, warmup_iters: int, warmup_ratio: float, milestones: list[int], gamma: float = 0.1
) -> ChainedScheduler:
    """Stepped every iteration: linear warm-up from ``warmup_ratio`` x lr over ``warmup_iters``, times
    ``gamma`` at each milestone iteration (MMDetection's ``step`` policy with ``warmup='linear'``)."""
    schedulers = [MultiStepLR(optimizer, milestones, gamma)]
    if warmup_iters > 0:
        schedulers.insert(0, LinearLR(optimizer, warmup_ratio, 1.0, warmup_iters))
    return ChainedScheduler(schedulers)


def warmup_poly(
    optimizer: torch.optim.Optimizer, warmup_iters: int, warmup_ratio: float, total_iters: int, power: float
) -> ChainedScheduler:
    """Stepped every iteration: ``(1 - it / total_iters) ** power`` x lr, times a linear warm-up from
    ``warmup_ratio`` over ``warmup_iters`` (MMSegmentation's ``poly`` policy with ``warmup='linear'``)."""
    schedulers = [PolynomialLR(optimizer, total_iters, power)]
    if warmup_iters > 0:
        schedulers.insert(0, LinearLR(optimizer, warmup_ratio, 1.0, warmup_iters))
    return ChainedScheduler(schedulers)
