"""``ppma train``, ``ppma eval``, ``ppma predict``: parse, call ``ppma.train``, print."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from .options import add_dataclass_flags, given_flags


def register(sub: argparse._SubParsersAction) -> None:
    from ..train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model (no arguments: ppma_nano on the built-in digits, a few minutes on CPU)",
        description="Train with the published recipe (ImageNet-layout --data-path), a named benchmark's recipe "
        "(--data cifar10|cifar100|fashion_mnist --data-root DIR: read there, downloaded where missing), or the "
        "digits recipe (no data). "
        "Options layer as: recipe <- resumed run's config <- --config file <- flags. "
        "Multi-GPU / multi-node: torchrun --nproc-per-node N -m ppma.cli train ...",
    )
    p.add_argument("--config", help="YAML or JSON file of options (e.g. configs/in1k_ppma_tiny.yaml)")
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="top-1 / top-5 / loss / images/s of a checkpoint (ours or a published .pth)")
    _add_classifier_flags(p)
    p.add_argument("--data-path", help="class folders, or an ImageNet root with val/ (default: the digits val split)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, help="data-loading processes (default: 4, at most the CPUs available)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"))
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="top-k classes of image files with a checkpoint (ours or a published .pth)")
    p.add_argument("images", nargs="+", help="image files, or folders (their images at any depth, sorted)")
    _add_classifier_flags(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the predictions to this JSON file (checked before predicting)")
    p.set_defaults(func=_predict)


def _add_classifier_flags(p: argparse.ArgumentParser) -> None:
    """What eval and predict share: the checkpoint (or published name), weights, transform and precision."""
    from .export import add_pretrained_flag

    p.add_argument("--checkpoint", help="a .pth or .safetensors file (or --model NAME --pretrained)")
    p.add_argument("--model", help="timm model name (default: the one stored in the checkpoint)")
    add_pretrained_flag(p)
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                   help="auto: the EMA weights where the file has them")  # fmt: skip
    p.add_argument("--input-size", type=int, help="evaluation size (default: the checkpoint's or the model's)")
    p.add_argument("--crop-pct", type=float, help="resize to input-size / crop-pct, then centre crop (224/256)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8", "auto"),
                   help="inference precision (ppma.for_inference): auto = the fastest this CPU runs (bf16 where "
                        "it has bf16 units); a precision the machine cannot run is refused")  # fmt: skip


@contextlib.contextmanager
def _checkpoint(args: argparse.Namespace) -> Iterator[str]:
    """The checkpoint eval / predict read within (a damaged published file says how to fetch it again)."""
    from .export import reading_checkpoint

    with reading_checkpoint(args) as checkpoint:
        if not checkpoint:
            raise ValueError("give --checkpoint FILE, or --model NAME --pretrained (e.g. --model ppma_tiny.in1k)")
        yield checkpoint


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None):
    """The ``TrainConfig`` of ``ppma train``: recipe <- ``base`` <- ``--config`` file <- flags."""
    from ..train.config import TrainConfig, layered_config, load_config_file

    from_file = load_config_file(args.config) if getattr(args, "config", None) else {}
    return layered_config(base, from_file, given_flags(args, TrainConfig))


def _train(args: argparse.Namespace) -> None:
    from ..train import run
    from ..train.engine import resumed_options

    base = resumed_options(getattr(args, "resume", None), getattr(args, "output_dir", None))
    summary = run(config_from_args(args, base))
    if summary["already_finished"]:  # run printed its one line and touched no file; exit 0
        return
    if summary["best_top1"] is not None:
        print(f"best top-1 {summary['best_top1']:.2f} (epoch {summary['best_epoch']}), final top-1 "
              f"{summary['final_top1']:.2f}; checkpoints in {summary['output_dir']}")  # fmt: skip


def _eval(args: argparse.Namespace) -> None:
    from ..train import evaluate_checkpoint

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
    with _checkpoint(args) as checkpoint:
        m = evaluate_checkpoint(checkpoint, args.data_path, args.model, args.weights, args.batch_size, args.workers,
                                args.device, args.input_size, args.crop_pct, args.amp, args.precision)  # fmt: skip
    what = f"{m['model']} ({m['weights']} weights, {m['input_size']}px, crop {m['crop_pct']:.3f}, {m['precision']})"
    print(f"{what} on {m['images']} images: "
          f"top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  loss {m['loss']:.4f}  {m['images_per_s']:.0f} img/s"
          + (f"  ({m['skipped']} unreadable images skipped)" if m["skipped"] else "")
          + (f"  ({m['not_images']})" if m["not_images"] else "")
          + (f"  [{m['assumed']}]" if m["assumed"] else ""))  # fmt: skip


def _predict(args: argparse.Namespace) -> int:
    """Prints the readable images' classes; each unreadable one is a line on stderr and the exit status is 1."""
    import json
    import sys

    from ..checkpoint import atomic_write_text
    from ..train import predict_images
    from .options import check_output_file, predict_status, said_skipped

    if args.json:
        check_output_file(args.json, "--json")  # before the model runs, not after
    with _checkpoint(args) as checkpoint:
        records = predict_images(checkpoint, args.images, args.model, args.weights, args.topk, args.device,
                                 args.input_size, args.crop_pct, args.precision)  # fmt: skip
    for note in ([records.assumed] if records.assumed else []) + records.notes:
        print(f"ppma predict: note: {note}", file=sys.stderr)
    for r in records:
        if not said_skipped(r):
            print(r["file"] + ": " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in r["top"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=1))  # a temporary file beside it, then renamed
    return predict_status(records)
