"""``ppma ablate``: the mask ablation (the paper's Table 4) through ``ppma.ablate.ablate``."""

from __future__ import annotations

import argparse

from .options import int_list


def _names(text: str) -> list[str]:
    from ..masks import mask_names

    return mask_names() if text == "all" else [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="train the same network once per mask and seed; write a Table-4-like table with paired differences",
        description="Default: every zoo mask, seeds 0,1, ppma_nano on the built-in digits on CPU (3 epochs each), "
        "compared with the mask 'none'. --data cifar10|cifar100|fashion_mnist --data-root D: that benchmark's "
        "recipe. --data-path: the published recipe on an ImageNet-layout folder (set --model, --epochs, --device). "
        "Options layer as: recipe <- --config file <- flags.",
    )
    p.add_argument("--masks", type=_names, help="comma-separated zoo names, or all (default)")
    p.add_argument("--seeds", type=int_list, default=[0, 1], help="comma-separated seeds (default 0,1)")
    p.add_argument(
        "--output-dir", default="runs/ablate", help="runs and ablation.md / ablation.json (default runs/ablate)"
    )
    p.add_argument("--config", help="YAML or JSON file of training options (ppma train's), applied before the flags")
    p.add_argument("--model", help="PPMA variant (default ppma_nano; ppma_tiny/small/base on GPU)")
    p.add_argument("--data", help="a named benchmark: digits (default), cifar10, cifar100, fashion_mnist")
    p.add_argument("--data-root", help="folder holding (or to download) the named benchmark's standard files")
    p.add_argument("--data-path", help="ImageNet-layout folder (train/, val/) instead of a named benchmark")
    p.add_argument("--epochs", type=int, help="epochs per run (default 3 on digits, the recipe's otherwise)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--input-size", type=int, help="training and evaluation size (upsamples small images)")
    p.add_argument("--device", help="cpu (default on digits), cuda, auto")
    p.add_argument(
        "--keep-decomposed",
        action="store_true",
        help="keep the variant's decomposed stages (polyline-family masks only; scan masks need full attention)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--baseline", default="none",
                       help="mask the others are compared with, paired over seeds with a 95%% interval (default none)")
    group.add_argument("--no-baseline", dest="baseline", action="store_const", const=None,
                       help="no paired differences (a single seed is then allowed)")  # fmt: skip
    p.add_argument("--on-mismatch", choices=("rerun", "refuse"), default="rerun",
                   help="a stored run with other settings: train it again (default) or stop with an error")  # fmt: skip
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's last.pth / best.pth (default: only result.json, log, config)")
    p.add_argument("--throughput-repeats", type=int, default=5,
                   help="timed inference passes per mask (default 5; 0: no timing)")  # fmt: skip
    p.add_argument("--throughput-batch", type=int, help="images per timed pass (default: the batch size)")
    p.set_defaults(func=_ablate)


def _ablate(args: argparse.Namespace) -> None:
    from ..ablate import ablate
    from ..masks import mask_names
    from ..train import load_config_file
    from ..train.config import layered_config

    from_file = load_config_file(args.config) if args.config else {}
    flags = {}
    for name in ("model", "data", "data_root", "data_path", "epochs", "batch_size", "input_size", "device"):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    layers = {**from_file, **flags}
    data = layers.get("data")
    logistics = {"plot": False, "progress": False}
    if not layers.get("data_path") and (data is None or data.lower() == "digits"):
        logistics.update(epochs=3, device="cpu")  # the digits ablation: short CPU runs
    base = layered_config(logistics, from_file, flags)
    if args.throughput_repeats < 0:
        raise ValueError(f"--throughput-repeats: must be >= 0, got {args.throughput_repeats}")
    ablate(
        masks=args.masks if args.masks is not None else mask_names(),
        seeds=args.seeds,
        base=base,
        output_dir=args.output_dir,
        full_attention=False if args.keep_decomposed else None,
        baseline=args.baseline,
        on_mismatch=args.on_mismatch,
        keep_checkpoints=args.keep_checkpoints,
        throughput_repeats=args.throughput_repeats,
        throughput_batch=args.throughput_batch,
    )
