"""Inference at the CPU's real speed: float32, bfloat16 and int8 models from one call.

``model = ppma.for_inference(model, precision="bf16")`` returns a module to call on float32 images
(the output is float32). What each precision does (BENCHMARKS.md, "Precision", has the numbers):

- every precision: eval mode, BatchNorm folded into the convolution or linear before it (no
  separate normalisation pass), weights channels-last where convolutions read them.
- ``bf16``: weights and activations bfloat16 end to end (one cast of the image in, one of the
  logits out). What must stay float32 stays float32: the decay parameters (``A_log``,
  ``dt_bias``), the log-decays and their prefix sums (the attention ops compute them in float32),
  and the rotary tables (a bfloat16 token index stops being exact at 256).
- ``int8``: the bf16 model with its linears dynamically quantised to int8 (per-token activation
  scales, per-channel weights, torchao); needs ``pip install 'ppma[int8]'``.
- ``auto``: the fastest the CPU runs (``resolve_precision``).

``compile=True`` runs the model under ``torch.compile``, which fuses the element-wise passes
(LayerNorm, GELU, rotary, casts, residual adds) that bound an eager bf16 forward; off by default,
because the first call of each input size then compiles for minutes on a small CPU.
"""

from __future__ import annotations

import copy
import functools
import importlib.util

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16", "int8", "auto")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _cpu_bf16_units() -> str | None:
    """The bf16 unit this CPU has (``amx_bf16`` or ``avx512_bf16``), None without one."""
    flags = cpu_flags()
    if flags is None:  # no /proc/cpuinfo (macOS, Windows): ask oneDNN
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def _cpu_int8_units() -> str | None:
    flags = cpu_flags()
    if flags is None:
        return "int8" if torch.backends.mkldnn.is_available() else None
    return next((f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags), None)


def has_int8_library() -> bool:
    return importlib.util.find_spec("torchao") is not None


def resolve_precision(precision: str = "auto", device: str | torch.device = "cpu") -> str:
    """``"fp32"``, ``"bf16"`` or ``"int8"`` for ``precision`` on ``device``; a one-line ValueError when it cannot run.

    ``auto`` is the fastest the device supports: on CPU ``bf16`` where it has bf16 units (AMX or
    AVX512-BF16), else ``fp32`` (int8 is never chosen automatically: its logits move further, see
    README); on CUDA ``bf16`` where the GPU supports it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda":
        if precision == "int8":
            raise ValueError("precision: int8 runs on CPU only here (torchao's CPU kernels); use bf16 on CUDA")
        if precision == "auto":
            return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        return precision
    if device.type != "cpu":
        if precision in ("fp32", "auto"):
            return "fp32"
        raise ValueError(f"precision: {precision} is implemented for CPU and CUDA, not {device.type}")
    if precision == "auto":
        return "bf16" if _cpu_bf16_units() else "fp32"
    if precision == "bf16" and not _cpu_bf16_units():
        raise ValueError(
            "precision: bf16 needs a CPU with bf16 units (amx_bf16 or avx512_bf16 in lscpu); this one has none"
        )
    if precision == "int8":
        if not has_int8_library():
            raise ValueError("precision: int8 needs torchao (pip install 'ppma[int8]')")
        if not _cpu_int8_units():
            raise ValueError(
                "precision: int8 needs a CPU with int8 units (amx_int8 or avx512_vnni in lscpu); this one has none"
            )
        if not _cpu_bf16_units():
            raise ValueError("precision: int8 runs on the bf16 model and needs bf16 units (amx_bf16 or avx512_bf16)")
    return precision


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(layer(x))`` as one layer (dim 0 of ``weight`` = output channels), in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    w = weight.double() * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    b = (bias.double() if bias is not None else torch.zeros_like(shift)) * scale + shift
    return w, b


def _folded(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d) -> nn.Module:
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.running_mean is None:
        return None
    if not bn.affine:
        return None
    w, b = _fold_bn(layer.weight, layer.bias, bn)
    new = copy.deepcopy(layer)
    dtype = layer.weight.dtype
    new.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    new.bias = nn.Parameter(b.to(dtype), requires_grad=False)
    return new


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution (or the classifier's linear) into it.

    In place; returns ``model``. Covers nn.Sequential runs ``Conv2d, BatchNorm2d`` (the stem), the
    downsampling ``reduction``/``norm`` pairs and the classifier head's ``proj``/``norm``.
    """
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    new = _folded(conv, bn)
                    if new is not None:
                        module._modules[a], module._modules[b] = new, nn.Identity()
        for conv_name, bn_name in (("reduction", "norm"), ("proj", "norm")):  # Downsample, ClassifierHead
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, (nn.Conv2d, nn.Linear)) and isinstance(bn, nn.BatchNorm2d):
                new = _folded(conv, bn)
                if new is not None:
                    setattr(module, conv_name, new)
                    setattr(module, bn_name, nn.Identity())
    return model


class _CastRotary(nn.Module):
    """FlatRotary's tables computed in float32 (exact token indices), handed out in the model's dtype."""

    def __init__(self, rotary: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.rotary = rotary
        self.dtype = dtype

    def forward(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        sin, cos = self.rotary(H, W)
        return sin.to(self.dtype), cos.to(self.dtype)


class InferenceModel(nn.Module):
    """A model run at one precision: takes float32 images, returns float32 outputs.

    ``model`` is the converted network (its weights in ``dtype``); ``precision`` names what it runs.
    """

    def __init__(self, model: nn.Module, precision: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.dtype))
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def _to_bf16(model: nn.Module) -> nn.Module:
    from .layers import FlatRotary

    # Decay parameters and tables (PathDecay's A_log and dt_bias, RMT's log_gamma) keep their dtype:
    # the log-decays they make, and the masks from those, are float32 anyway. So do the rotary angles.
    keep = {}
    for m in model.modules():
        names = ("angle",) if isinstance(m, FlatRotary) else ("A_log", "dt_bias", "log_gamma")
        for name in names:
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and name not in m._modules:
                keep[(m, name)] = t.detach().clone()
    model = model.to(torch.bfloat16)
    for (m, name), t in keep.items():
        if name in m._parameters:
            m._parameters[name] = nn.Parameter(t, requires_grad=False)
        else:
            m._buffers[name] = t
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FlatRotary):
                setattr(module, child_name, _CastRotary(child, torch.bfloat16))
    return model


def _quantize_int8(model: nn.Module) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    def big_linear(m: nn.Module, fqn: str) -> bool:
        # The decay generator's d -> 2 linear stays bf16: too small to gain, and it feeds the mask.
        return isinstance(m, nn.Linear) and m.out_features >= 16 and m.in_features >= 16

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=big_linear)
    return model


def for_inference(
    model: nn.Module,
    precision: str = "auto",
    *,
    compile: bool = False,
    channels_last: bool = True,
    copy_model: bool = True,
) -> InferenceModel:
    """``model`` ready to serve at ``precision`` (``"fp32"``, ``"bf16"``, ``"int8"`` or ``"auto"``).

    Args:
        model: a PPMA classifier or backbone (any module taking an image batch works; the PPMA-specific
            parts are the float32 decays and rotary tables).
        precision: see the module docstring; ``auto`` = ``resolve_precision("auto")``.
        compile: run under ``torch.compile`` (inductor). The first call compiles (minutes for PPMA-T on
            2 cores), and each new input size compiles again: for serving many images of one size.
        channels_last: convolution weights in channels-last layout (the layers' tokens already are).
        copy_model: convert a copy (default) rather than ``model`` itself.

    Returns:
        an ``InferenceModel``: call it on float32 images, get float32 outputs; ``.model`` is the
        converted network, ``.precision`` the resolved precision.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    precision = resolve_precision(precision, device)
    if copy_model:
        model = copy.deepcopy(model)
    model = fold_batchnorm(model.eval())
    model.requires_grad_(False)
    dtype = torch.float32
    if precision in ("bf16", "int8"):
        model = _to_bf16(model)
        dtype = torch.bfloat16
    if precision == "int8":
        model = _quantize_int8(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return InferenceModel(model, precision, dtype).eval()
