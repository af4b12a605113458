"""``ppma export``: a checkpoint as timm's hub format (a folder) or an ONNX graph (``.onnx``).

Also the ``--pretrained`` handling that predict / eval / viz share (``add_pretrained_flag``,
``checkpoint_from_args``, ``reading_checkpoint``): ``--model ppma_tiny.in1k --pretrained`` stands for the
published file.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from .options import size as _size


def add_pretrained_flag(p: argparse.ArgumentParser) -> None:
    """``--pretrained``: the published weights of ``--model`` (e.g. ppma_tiny.in1k) from the Hugging Face cache."""
    p.add_argument("--pretrained", action="store_true",
                   help="the published weights of --model (ppma_tiny.in1k, ppma_small.in1k, ppma_base.in1k), "
                        "downloaded once into the Hugging Face cache; instead of --checkpoint")  # fmt: skip


def checkpoint_from_args(args: argparse.Namespace) -> str | None:
    """The checkpoint file a command should read: ``--checkpoint``, or the published file of ``--model``
    with ``--pretrained``; None when neither is given. Both at once is an error."""
    checkpoint = getattr(args, "checkpoint", None)
    if not getattr(args, "pretrained", False):
        return checkpoint
    if checkpoint:
        raise ValueError("--pretrained and --checkpoint: give one (--pretrained takes the published file of --model)")
    if not getattr(args, "model", None):
        raise ValueError("--pretrained needs --model, e.g. --model ppma_tiny.in1k")
    from ..hub import pretrained_file

    return str(pretrained_file(args.model))


@contextlib.contextmanager
def reading_checkpoint(args: argparse.Namespace) -> Iterator[str | None]:
    """``checkpoint_from_args(args)``, for a block that reads it: a published file (``--pretrained``) that
    cannot be read (a damaged download in the Hugging Face cache) says how to fetch it again."""
    checkpoint = checkpoint_from_args(args)
    if not getattr(args, "pretrained", False):
        yield checkpoint
        return
    from ..hub import hub_source, reading_hub_file

    _, hub_id, filename = hub_source(args.model)
    with reading_hub_file(checkpoint, hub_id, filename):
        yield checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a checkpoint as timm's hub format (a folder) or ONNX (a .onnx file)",
        description="OUT ending in .onnx: an ONNX graph (input x: normalised images, output logits), checked in "
        "ONNX Runtime against eager before it is kept. Otherwise (or --format timm): a folder with config.json "
        "and model.safetensors for timm.create_model('local-dir:OUT') and timm's push_to_hf_hub.",
    )
    p.add_argument("out", help="output: a folder (timm format) or a .onnx file")
    p.add_argument("--checkpoint", help="ours or a published .pth / .safetensors")
    p.add_argument("--model", help="timm model name (default: the one stored in the checkpoint)")
    add_pretrained_flag(p)
    p.add_argument("--format", choices=("timm", "onnx"), help="default: onnx for a .onnx path, else timm")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                   help="auto: the EMA weights where the file has them")  # fmt: skip
    p.add_argument("--size", type=_size, help="ONNX: export size, 224 or HxW (default: the checkpoint's)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size")
    p.add_argument("--dynamic-size", action="store_true", help="ONNX: any height and width that are multiples of 32")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    with reading_checkpoint(args) as checkpoint:
        _export_file(args, checkpoint)


def _export_file(args: argparse.Namespace, checkpoint: str | None) -> None:
    from ..export import export_onnx, export_timm

    if not checkpoint:
        raise ValueError("export: give --checkpoint FILE, or --model NAME --pretrained")
    fmt = args.format or ("onnx" if str(args.out).lower().endswith(".onnx") else "timm")
    if fmt == "timm":
        if args.size or args.dynamic_batch or args.dynamic_size:
            raise ValueError("--size, --dynamic-batch and --dynamic-size are ONNX options (the timm format has none)")
        out = export_timm(checkpoint, args.out, args.model, args.weights, args.force)
        print(f"wrote {out}/config.json and {out}/model.safetensors (timm.create_model('local-dir:{out}'))")
        return
    r = export_onnx(checkpoint, args.out, args.size, args.dynamic_batch, args.dynamic_size, args.model,
                    args.weights, args.force)  # fmt: skip
    shape = ("B" if args.dynamic_batch else "1") + ", 3, " + (
        "H, W (multiples of 32)" if args.dynamic_size else f"{r['size'][0]}, {r['size'][1]}"
    )
    print(f"wrote {r['path']}: input x ({shape}), output logits; ONNX Runtime vs eager max |diff| "
          f"{r['max_abs_diff']:.2e}")  # fmt: skip
