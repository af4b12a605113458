"""``ppma detect train|eval|predict`` and ``ppma segment train|eval|predict``.

Training flags are generated from the ``DetectConfig`` / ``SegmentConfig`` fields (one source of
truth, ``ppma.cli.options.add_dataclass_flags``); ``--data builtin`` starts from the built-in example's
settings instead of the published ones,
and any flag given overrides either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from .options import add_dataclass_flags, given_flags, predict_status, said_skipped

def _config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The recipe (``--data builtin``: the built-in example's) with the flags given on top."""
    given = given_flags(args, cls)
    base = cls.builtin_example() if given.get("data") == "builtin" else cls()
    return dataclasses.replace(base, **given)


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """A config dataclass from the JSON dict stored in a checkpoint (lists back to tuples, unknown keys dropped)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def register(sub: argparse._SubParsersAction) -> None:
    from ..dense.detection import DetectConfig
    from ..dense.segmentation import SegmentConfig

    for task, cls, what in (
        ("detect", DetectConfig, "Mask R-CNN (torchvision) on a PPMA backbone, COCO format"),
        ("segment", SegmentConfig, "UPerNet on a PPMA backbone, ADE20K / Cityscapes layouts"),
    ):
        p = sub.add_parser(task, help=what, description=what)
        actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        t = actions.add_parser("train", help="train (torchrun for several processes)")
        add_dataclass_flags(t, cls)
        t.set_defaults(func=_detect_train if task == "detect" else _segment_train)

        checkpoint_help = "last.pth written by train" + (", or a published UPerNet .pth" if task == "segment" else "")
        e = actions.add_parser("eval", help="score a trained checkpoint (mAP / mIoU)")
        e.add_argument("checkpoint", help=checkpoint_help)
        e.add_argument("--data", help="dataset root (default: the one the run trained on)")
        e.add_argument("--split", help="split to score (default: the run's validation split)")
        e.add_argument("--device", default="cpu")
        e.add_argument("--untrained", action="store_true", help="score a freshly initialised model of the same config")
        e.add_argument("--json", help="also write the scores to this JSON file")
        _add_progress_flag(e)
        if task == "segment":
            e.add_argument("--layout", choices=("ade20k", "cityscapes"), help="default: the run's")
            e.add_argument("--aug", action="store_true", help="multi-scale (0.5-1.75) + flip test")
        e.set_defaults(func=_detect_eval if task == "detect" else _segment_eval)

        r = actions.add_parser("predict", help="draw predictions on images")
        r.add_argument("checkpoint", help=checkpoint_help)
        r.add_argument("images", nargs="+", help="image files, or folders (their images at any depth, sorted)")
        r.add_argument("--output", default=f"runs/{task}_predictions", help="folder for the drawn images")
        r.add_argument("--device", default="cpu")
        if task == "detect":
            r.add_argument("--score-threshold", type=float, default=0.5)
        else:
            r.add_argument("--aug", action="store_true", help="multi-scale + flip")
        _add_progress_flag(r)
        r.set_defaults(func=_detect_predict if task == "detect" else _segment_predict)


def _add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` of eval and predict, as the train flag that ``DetectConfig.progress`` makes."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar over the images (default: only when stderr is a terminal)")  # fmt: skip


def _write_json(path: str | None, scores: dict[str, Any]) -> None:
    """``--json``: written beside itself and renamed (``atomic_write_text``), never seen half-written."""
    if path:
        from ..checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(scores, indent=1))


def _detect_train(args: argparse.Namespace) -> None:
    from ..dense.detection import DetectConfig, train_detection

    config = _config_from_args(DetectConfig, args)
    scores = train_detection(config)
    from ..runtime import is_main_process

    if scores and is_main_process():
        print(
            f"done: box mAP {100 * scores['bbox_mAP']:.1f}, mask mAP {100 * scores['segm_mAP']:.1f} "
            f"(weights in {Path(config.output) / 'last.pth'})"
        )


def _builtin_beside(config: Any, checkpoint: str) -> Any:
    """A run on the built-in set keeps it in its folder's ``data/``, beside ``last.pth``: evaluation reads it
    there (the saved relative ``output`` built a second copy under whatever folder eval ran in)."""
    if config.data != "builtin":
        return config
    return dataclasses.replace(config, output=str(Path(checkpoint).resolve().parent))


def _detect_eval(args: argparse.Namespace) -> None:

    from ..runtime import DistInfo, pick_device
    from ..dense.detection import DetectConfig, coco_split, evaluate_detection, model_from_checkpoint, resolve_data

    pick_device(args.device)  # an unknown or absent device fails in one line before the model loads
    model, cfg, meta = model_from_checkpoint(args.checkpoint, args.device, weights=not args.untrained)
    config = config_from_dict(DetectConfig, cfg)
    if args.data:
        config = dataclasses.replace(config, data=args.data)
    root, _, val_split = resolve_data(_builtin_beside(config, args.checkpoint))
    dataset = coco_split(root, args.split or val_split, train=False)
    if dataset.category_ids != meta["category_ids"]:
        raise ValueError(f"data: categories {dataset.category_ids} differ from the model's {meta['category_ids']}")
    scores = evaluate_detection(model, dataset, DistInfo(device=pick_device(args.device)), progress=args.progress)
    print(
        f"{len(dataset)} images: box mAP {100 * scores['bbox_mAP']:.1f} (AP50 {100 * scores['bbox_mAP_50']:.1f}), "
        f"mask mAP {100 * scores['segm_mAP']:.1f} (AP50 {100 * scores['segm_mAP_50']:.1f})"
    )
    _write_json(args.json, scores)


def _detect_predict(args: argparse.Namespace) -> int:
    from ..dense.detection import predict_detection

    records = predict_detection(args.checkpoint, args.images, args.output, args.score_threshold, args.device,
                                args.progress)  # fmt: skip
    for r in records:
        if said_skipped(r):
            continue
        print(f"{r['file']}: {len(r['boxes'])} objects -> {r['drawn']}")
    return predict_status(records)


def _segment_train(args: argparse.Namespace) -> None:
    from ..dense.segmentation import SegmentConfig, train_segmentation

    config = _config_from_args(SegmentConfig, args)
    scores = train_segmentation(config)
    from ..runtime import is_main_process

    if scores and is_main_process():
        print(f"done: mIoU {100 * scores['mIoU']:.1f} (weights in {Path(config.output) / 'last.pth'})")


def _segment_eval(args: argparse.Namespace) -> None:

    from ..runtime import DistInfo, pick_device
    from ..dense.data import read_class_names
    from ..dense.segmentation import (
        SegmentConfig,
        evaluate_segmentation,
        make_dataset,
        model_from_checkpoint,
        resolve_data,
    )

    pick_device(args.device)  # an unknown or absent device fails in one line before the model loads
    model, cfg, meta = model_from_checkpoint(args.checkpoint, args.device, weights=not args.untrained)
    config = config_from_dict(SegmentConfig, cfg)
    changes = {k: v for k, v in (("data", args.data), ("layout", args.layout), ("val_split", args.split)) if v}
    config = dataclasses.replace(config, **changes).resolved()
    k = len(meta["class_names"])
    root, _ = resolve_data(dataclasses.replace(_builtin_beside(config, args.checkpoint), num_classes=0))
    names = read_class_names(root)  # the data's own count against the model's (was "num_classes: K given")
    if names is not None and len(names) != k:
        raise ValueError(f"data: {root / 'classes.json'} names {len(names)} classes but the model predicts {k} "
                         f"({', '.join(meta['class_names'][:8])}{', ...' if k > 8 else ''})")  # fmt: skip
    dataset = make_dataset(root, config, k, train=False)
    scores = evaluate_segmentation(model, dataset, multiscale=args.aug, flip=args.aug,
                                   info=DistInfo(device=pick_device(args.device)), progress=args.progress)  # fmt: skip
    print(
        f"{len(dataset)} images, {'multi-scale + flip' if args.aug else 'single scale'}: "
        f"mIoU {100 * scores['mIoU']:.2f}  mAcc {100 * scores['mAcc']:.2f}  aAcc {100 * scores['aAcc']:.2f}"
    )
    for name, iou in zip(meta["class_names"], scores["IoU"], strict=True):
        print(f"  {name:20s} IoU {'   n/a' if iou != iou else f'{100 * iou:6.2f}'}")
    _write_json(args.json, scores)


def _segment_predict(args: argparse.Namespace) -> int:
    from ..dense.segmentation import predict_segmentation

    records = predict_segmentation(args.checkpoint, args.images, args.output, args.aug, args.aug, args.device,
                                   args.progress)  # fmt: skip
    for r in records:
        if said_skipped(r):
            continue
        print(f"{r['file']}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["fractions"].items()))
    print(f"colour-coded predictions in {args.output} (legend.json: class -> RGB)")
    return predict_status(records)

