"""Core sub-commands: ``ppma info``, ``ppma convert``, ``ppma backends``."""

from __future__ import annotations

import argparse

from .options import size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters and GFLOPs of a model at an input size")
    p.add_argument("model", help="timm model name, e.g. ppma_tiny")
    p.add_argument("--size", type=size, default=(224, 224), help="input size: 224 or HxW (default 224)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: the model's own, e.g. 10 for ppma_nano, 1000 for ppma_tiny)")
    p.set_defaults(func=_info)

    p = sub.add_parser("convert", help="write a published or our checkpoint as our format (.safetensors)")
    p.add_argument("src", help="input checkpoint (.pth or .safetensors)")
    p.add_argument("dst", help="output file (.safetensors, or .pth)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights (model_ema) of a training checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing output file (never the input)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("backends", help="which attention backends and precisions can run here, and why not")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_backends)


def _info(args: argparse.Namespace) -> None:
    import timm

    from .. import models  # noqa: F401  (registers the models)
    from ..flops import count_macs

    if args.model not in timm.list_models("*"):
        raise ValueError(f"model: unknown name {args.model!r}; PPMA models: {', '.join(timm.list_models('ppma_*'))}")
    # None: the registry's class count, the model timm.create_model(name) builds (ppma_nano: 10, not 1000)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = timm.create_model(args.model, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, (1, model.in_chans, *args.size))
    print(f"model       {args.model}")
    print(f"input       {args.size[0]}x{args.size[1]}")
    print(f"classes     {model.num_classes}")
    print(f"parameters  {params / 1e6:.3f} M")
    print(f"GFLOPs      {macs / 1e9:.2f}  (one multiply-add = one FLOP, as fvcore and the paper count)")


def _convert(args: argparse.Namespace) -> None:
    from ..checkpoint import convert

    n = convert(args.src, args.dst, use_ema=args.ema, force=args.force)
    print(f"wrote {n} tensors to {args.dst}")


def _backends(args: argparse.Namespace) -> None:
    import torch

    from ..ops import Backend, can_run, choose_backend
    from ..runtime import pick_device

    q = torch.zeros(1, 1, 2, 2, 8, device=pick_device(args.device))
    print(f"device {args.device}, torch {torch.__version__}")
    for op in ("full", "criss_cross"):
        for grad in (False, True):
            auto = choose_backend(op, q, grad).value
            print(f"{op} attention, {'training' if grad else 'inference'}: auto -> {auto}")
            for b in Backend:
                if b == Backend.AUTO:
                    continue
                ok, why = can_run(b, op, q, grad)
                print(f"  {b.value:10s} {'yes' if ok else 'no: ' + why}")
    _precisions(q.device)


def _precisions(device) -> None:
    """What ``--precision`` (eval, predict; ``for_inference``) and training's ``--amp`` can run on ``device``."""
    from ..cpu_units import listed_units
    from ..inference import PRECISIONS, int8_route, resolve_precision
    from ..runtime import amp_dtype_for

    if device.type == "cpu":
        print(f"CPU units: {', '.join(listed_units()) or 'none of avx2, avx512_bf16/fp16/vnni, amx'}")
    print(f"inference precision (--precision, ppma.for_inference): auto -> {resolve_precision('auto', device)}")
    for name in PRECISIONS[:-1]:
        try:
            resolve_precision(name, device)
            how = f" ({int8_route()} int8 kernels)" if name == "int8" else ""
            print(f"  {name:10s} yes{how}")
        except ValueError as e:
            print(f"  {name:10s} no: {str(e).removeprefix('precision: ')}")
    print(f"training amp (--amp): auto -> {amp_dtype_for('auto', device) or 'none'}")
    for name in ("bf16", "fp16"):
        try:
            amp_dtype_for(name, device)
            print(f"  {name:10s} yes")
        except ValueError as e:
            print(f"  {name:10s} no: {str(e).removeprefix('amp: ')}")
