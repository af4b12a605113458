"""Inference at the CPU's real speed: float32, bfloat16 and int8 models from one call.

``model = ppma.for_inference(model, precision="bf16")`` returns a module to call on float32 images
(the output is float32). What each precision does (BENCHMARKS.md, "Precision", has the numbers):

- every precision: eval mode, BatchNorm folded into the convolution or linear before it (no
  separate normalisation pass), weights channels-last where convolutions read them.
- ``bf16``: weights and activations bfloat16 end to end (one cast of the image in, one of the
  logits out). What must stay float32 stays float32: the decay parameters (``A_log``,
  ``dt_bias``), the log-decays and their prefix sums (the attention ops compute them in float32),
  and the rotary tables (a bfloat16 token index stops being exact at 256).
- ``int8``: linears dynamically quantised to int8 (weights per output channel, activations at each
  call), by the CPU: where it has bf16 units, the bf16 model with torchao's int8 linears (per-token
  activation scales; needs ``pip install 'ppma[int8]'``); elsewhere (AVX2 CPUs) the float32 model with
  PyTorch's own x86 int8 kernels (``Int8DynamicLinear``), which measured 2x a float32 linear there.
- ``auto``: the fastest the CPU runs (``resolve_precision``).

``compile=True`` runs the model under ``torch.compile``, which fuses the element-wise passes
(LayerNorm, GELU, rotary, casts, residual adds) that bound an eager bf16 forward; off by default,
because the first call of each input size then compiles for minutes on a small CPU.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import warnings

import torch
import torch.nn as nn

from .cpu_units import bf16_units, int8_units, x86_int8_kernels

PRECISIONS = ("fp32", "bf16", "int8", "auto")


def has_int8_library() -> bool:
    return importlib.util.find_spec("torchao") is not None


def int8_route() -> str:
    """How ``int8`` runs on this CPU: ``"torchao"`` (on the bf16 model, CPUs with bf16 units) or ``"x86"``
    (PyTorch's own int8 kernels on the float32 model, AVX2 CPUs without bf16 units). Call after
    ``resolve_precision`` has accepted ``int8``."""
    return "torchao" if bf16_units() else "x86"


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
        return "bf16" if bf16_units() else "fp32"
    if precision == "bf16" and not bf16_units():
        raise ValueError(
            "precision: bf16 needs a CPU with bf16 units (amx_bf16 or avx512_bf16 in lscpu); this one has none"
        )
    if precision == "int8":
        if not bf16_units():  # the float32 model with PyTorch's x86 int8 kernels
            if not x86_int8_kernels():
                raise ValueError(
                    "precision: int8 needs a CPU with avx2 (PyTorch's x86 int8 kernels) or with bf16 units "
                    "(amx_bf16 or avx512_bf16, with torchao); this one has neither"
                )
            return precision
        if not has_int8_library():
            raise ValueError("precision: int8 needs torchao (pip install 'ppma[int8]')")
        if not int8_units():
            raise ValueError(
                "precision: int8 needs a CPU with int8 units (amx_int8 or avx512_vnni in lscpu); this one has none"
            )
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


def _model_attribute(name: str) -> property:
    def get(self):
        # An AttributeError here (the network has no such attribute) falls through to nn.Module's
        # __getattr__, which raises the usual "'InferenceModel' object has no attribute ...", so
        # hasattr(fast, name) is what hasattr(fast.model, name) is.
        return getattr(self.model, name)

    return property(get, doc=f"The wrapped network's ``{name}`` (read-only).")


class InferenceModel(nn.Module):
    """A model run at one precision: takes float32 images, returns float32 outputs.

    ``model`` is the converted network (its weights in ``dtype``); ``precision`` names what it runs.
    ``feature_info``, ``pretrained_cfg``, ``default_cfg``, ``num_classes`` and ``num_features`` are the
    network's (read-only), so timm code that reads them works on the wrapper too.
    """

    # What code written for a timm model reads off it (``model.feature_info.channels()`` on a features_only
    # backbone, ``timm.data.resolve_data_config(model=...)`` reading ``pretrained_cfg``): the network's.
    feature_info = _model_attribute("feature_info")
    pretrained_cfg = _model_attribute("pretrained_cfg")
    default_cfg = _model_attribute("default_cfg")
    num_classes = _model_attribute("num_classes")
    num_features = _model_attribute("num_features")

    def __init__(self, model: nn.Module, precision: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_float32(self.model(x.to(self.dtype)))


def _to_float32(out):
    """Floating tensors in ``out`` as float32, also inside the list / tuple / dict a ``features_only``
    backbone returns (a bf16 backbone handed its stage maps out in bfloat16)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return type(out)((k, _to_float32(v)) for k, v in out.items())
    return out


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


def _big_linear(m: nn.Module, fqn: str = "") -> bool:
    """The linears int8 replaces. The decay generator's d -> 2 linear keeps its float type: too small to
    gain, and it feeds the mask."""
    return isinstance(m, nn.Linear) and m.out_features >= 16 and m.in_features >= 16


class Int8DynamicLinear(nn.Module):
    """``linear`` with int8 weights (symmetric, one scale per output channel) and its input quantised to
    int8 at each call (one scale and zero point per call), on PyTorch's x86 (fbgemm) kernels.

    Inputs use 7 of the 8 bits (``reduce_range``): the AVX2 kernels add products of pairs in int16, which
    full-range inputs could overflow. Float32 in, float32 out; any leading dims.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(scale.shape, dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.14 marks quantized tensors deprecated; these kernels need one
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with _quantized_engine("x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"):
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (x86 kernels)"


@contextlib.contextmanager
def _quantized_engine(name: str):
    """Pack weights for ``name``'s kernels (the engine is process-global; put back what was there)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _quantize_int8(model: nn.Module) -> nn.Module:
    if int8_route() == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_big_linear)
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if _big_linear(child):
                setattr(module, name, Int8DynamicLinear(child))
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
    if precision == "bf16" or (precision == "int8" and int8_route() == "torchao"):
        model = _to_bf16(model)
        dtype = torch.bfloat16
    if precision == "int8":
        model = _quantize_int8(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        # Static shapes: a second input size compiles a graph of its own (ppma_nano: 115 s on 2 busy cores);
        # torch's default re-traced the model with symbolic shapes there (612 s, same machine and hour).
        model = torch.compile(model, dynamic=False)
    return InferenceModel(model, precision, dtype).eval()
