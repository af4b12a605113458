"""Multiply-add counting that reproduces the paper's fvcore numbers (one multiply-add = one FLOP).

Counted like fvcore's defaults: matrix products and convolutions by their multiply-adds, BatchNorm
in eval mode as 2 per element, LayerNorm as 5 per element; element-wise work (softmax, masks,
activations) is not counted. The model runs on the reference backend, whose attention has the
published structure (one q k^T and one attn @ v per full layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _mm(args) -> int:
    a, b = args[-2], args[-1]
    return a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args) -> int:
    return _mm(args[1:3])


def _bmm(args) -> int:
    a, b = args[-2], args[-1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _baddbmm(args) -> int:
    return _bmm(args[1:3])


def _conv(args, out) -> int:
    weight = args[1]  # (C_out, C_in / groups, kh, kw): each output element takes C_in/groups * kh * kw
    return out.numel() * weight.shape[1] * math.prod(weight.shape[2:])


def _sdpa(args) -> int:
    q, k, v = args[0], args[1], args[2]
    return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


class _MacCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet is aten.mm:
            self.total += _mm(args)
        elif packet is aten.addmm:
            self.total += _addmm(args)
        elif packet is aten.bmm:
            self.total += _bmm(args)
        elif packet is aten.baddbmm:
            self.total += _baddbmm(args)
        elif packet is aten.convolution:
            self.total += _conv(args, out)
        elif packet in (aten._native_batch_norm_legit_no_training, aten.native_batch_norm):
            self.total += 2 * args[0].numel()
        elif packet is aten.native_layer_norm:
            self.total += 5 * args[0].numel()
        elif packet in (aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_efficient_attention,
                        aten._scaled_dot_product_flash_attention):  # fmt: skip
            self.total += _sdpa(args)
        return out


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass of ``model`` (eval mode, reference backend) on a random ``input_shape``."""
    was_training = model.training
    model.eval()
    backends = {}
    for name, m in model.named_modules():
        if hasattr(m, "backend"):
            backends[name] = m.backend
            m.backend = "reference"
    param = next(model.parameters())
    x = torch.randn(input_shape, device=param.device, dtype=param.dtype)
    try:
        with _MacCounter() as counter:
            model(x)
    finally:
        for name, m in model.named_modules():
            if name in backends:
                m.backend = backends[name]
        model.train(was_training)
    return counter.total
