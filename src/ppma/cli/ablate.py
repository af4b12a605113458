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
        help="train the same network once per mask and seed; write a Table-4-like table",
        description="Default: every zoo mask, seeds 0,1, ppma_nano on the built-in digits on CPU (3 epochs each). "
        "With --data-path: the published recipe on an ImageNet-layout folder (set --model, --epochs, --device).",
    )
    p.add_argument("--masks", type=_names, help="comma-separated zoo names, or all (default)")
    p.add_argument("--seeds", type=int_list, default=[0, 1], help="comma-separated seeds (default 0,1)")
    p.add_argument(
        "--output-dir", default="runs/ablate", help="runs and ablation.md / ablation.json (default runs/ablate)"
    )
    p.add_argument("--config", help="YAML or JSON file of training options (ppma train's), applied before the flags")
    p.add_argument("--model", help="PPMA variant (default ppma_nano; ppma_tiny/small/base on GPU)")
    p.add_argument("--data-path", help="ImageNet-layout folder (train/, val/); default the built-in digits")
    p.add_argument("--epochs", type=int, help="epochs per run (default 3 on digits)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="cpu (default on digits), cuda, auto")
    p.add_argument(
        "--keep-decomposed",
        action="store_true",
        help="keep the variant's decomposed stages (polyline-family masks only; scan masks need full attention)",
    )
    p.set_defaults(func=_ablate)


def _ablate(args: argparse.Namespace) -> None:
    from ..ablate import ablate, default_base_config
    from ..masks import mask_names
    from ..train import TrainConfig, load_config_file

    options = load_config_file(args.config) if args.config else {}
    for name in ("model", "data_path", "epochs", "batch_size", "device"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    base = default_base_config(**options) if not options.get("data_path") else TrainConfig(**options)
    ablate(
        masks=args.masks if args.masks is not None else mask_names(),
        seeds=args.seeds,
        base=base,
        output_dir=args.output_dir,
        full_attention=False if args.keep_decomposed else None,
    )
