"""What this CPU multiplies in hardware: the one place ``ppma`` reads CPU features.

``for_inference`` (``ppma.inference``) and training's ``--amp`` (``ppma.runtime``) refuse a precision
the CPU would only run in software (PyTorch emulates bf16 and fp16 on any CPU, several times slower
than float32) with one line naming the missing feature, and ``auto`` picks from what is here.
"""

from __future__ import annotations

import functools
import platform

import torch

BF16_UNITS = ("amx_bf16", "avx512_bf16")
FP16_UNITS = ("amx_fp16", "avx512_fp16")
INT8_UNITS = ("amx_int8", "avx512_vnni", "avx_vnni")


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


def listed_units() -> list[str]:
    """This CPU's flags that decide a precision here (AVX2, bf16 / fp16 / int8 units), sorted, for reports."""
    known = {"avx2", *BF16_UNITS, *FP16_UNITS, *INT8_UNITS}
    return sorted(f for f in cpu_flags() or () if f in known)


def bf16_units() -> str | None:
    """The bf16 unit this CPU has (``amx_bf16`` or ``avx512_bf16``), None without one."""
    flags = cpu_flags()
    if flags is None:  # no /proc/cpuinfo (macOS, Windows): ask oneDNN
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return next((f for f in BF16_UNITS if f in flags), None)


def fp16_units() -> str | None:
    """The fp16 unit this CPU has (``amx_fp16`` or ``avx512_fp16``), None without one."""
    flags = cpu_flags()
    if flags is None:
        return "fp16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_fp16_supported() else None
    return next((f for f in FP16_UNITS if f in flags), None)


def int8_units() -> str | None:
    """The int8 dot-product unit this CPU has (AMX or VNNI), None without one."""
    flags = cpu_flags()
    if flags is None:
        return "int8" if torch.backends.mkldnn.is_available() else None
    return next((f for f in INT8_UNITS if f in flags), None)


def x86_int8_kernels() -> bool:
    """Whether PyTorch's x86 int8 kernels (fbgemm) run here: an AVX2 CPU and a torch built with them."""
    engines = torch.backends.quantized.supported_engines
    if not ("x86" in engines or "fbgemm" in engines) or not hasattr(torch, "quantize_per_channel"):
        return False  # (quantized tensors are deprecated since torch 2.14: refuse cleanly once they are gone)
    flags = cpu_flags()
    return "avx2" in flags if flags is not None else platform.machine().lower() in ("x86_64", "amd64")


def require_cpu_amp(dtype: torch.dtype | None) -> None:
    """A one-line ValueError where autocast to ``dtype`` on this CPU would run in software."""
    if dtype == torch.bfloat16 and not bf16_units():
        raise ValueError(
            "amp: bf16 on CPU needs bf16 units (amx_bf16 or avx512_bf16 in lscpu); this CPU has none, and "
            "PyTorch would emulate bf16 several times slower than float32: train without amp"
        )
    if dtype == torch.float16 and not fp16_units():
        raise ValueError(
            "amp: fp16 on CPU needs fp16 units (amx_fp16 or avx512_fp16 in lscpu); this CPU has none: train without amp"
        )
