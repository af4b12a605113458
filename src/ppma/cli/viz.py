"""``ppma viz mask|attention|decay|sweep``: parse, call ``ppma.viz``, print the paths written."""

from __future__ import annotations

import argparse
from pathlib import Path

from .export import add_pretrained_flag, reading_checkpoint
from .options import size


def _query(text: str) -> tuple[float, float]:
    """'X,Y': integers are image pixels, numbers with a decimal point fractions of width / height."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(float(p) if "." in p else int(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected X,Y like 120,80 (pixels) or 0.5,0.25 (fractions), got {text!r}"
        ) from None


def _common(
    p: argparse.ArgumentParser, out: str, head_default: int | None = 0, block: bool = True, query: bool = True
) -> None:
    p.add_argument("image", nargs="?", help="JPEG/PNG file (any size); default: a scikit-image photograph")
    p.add_argument("--sample", default="astronaut", help="bundled photograph without IMAGE: astronaut, chelsea, coffee")
    p.add_argument("--model", help="PPMA model name (default: the one --checkpoint names, else ppma_tiny)")
    p.add_argument("--checkpoint", help="weights, ours or published (.pth / .safetensors); default random weights")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "model"),
                   help="auto: the EMA weights where the file has them, as eval and predict")  # fmt: skip
    p.add_argument("--ema", dest="weights", action="store_const", const="ema", help="the same as --weights ema")
    add_pretrained_flag(p)
    p.add_argument("--size", type=int, default=224, help="longer image side fed to the model (default 224)")
    if query:
        p.add_argument("--query", type=_query, default=(0.5, 0.5),
                       help="query X,Y: pixels (120,80) or fractions (0.5,0.25); default the centre")  # fmt: skip
    if block:
        p.add_argument("--stage", type=int, default=2, help="stage, 0-based (default 2)")
        p.add_argument("--block", type=int, default=0, help="block within the stage, 0-based (default 0)")
    help_head = "head (default 0)" if head_default is not None else "head (default: mean over heads)"
    p.add_argument("--head", type=int, default=head_default, help=help_head)
    p.add_argument("--dpi", type=int, default=100, help="figure resolution (pixels per inch)")
    p.add_argument("-o", "--out", default=out,
                   help=f"output file (default {out}; without a suffix {Path(out).suffix} is added)")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    viz = sub.add_parser("viz", help="pictures: polyline masks, masked attention, learned decays, query sweeps")
    vsub = viz.add_subparsers(dest="viz_command", metavar="WHAT", required=True)

    p = vsub.add_parser("mask", help="the polyline mask of one query token (H2V, V2H, average), on grid and image")
    _common(p, "ppma_viz_mask.png")
    p.add_argument("--matrix", type=size, metavar="HxW",
                   help="also draw the N x N mask matrix of an HxW token window at the query (e.g. 4x4)")  # fmt: skip
    p.add_argument("--mask", help="zoo mask(s) instead: a name (hilbert, rmt, ...), a comma list, or all "
                   "(side by side, the paper's Figure 6), with the captured block's decays")  # fmt: skip
    p.set_defaults(func=_mask)

    p = vsub.add_parser("attention", help="masked attention of a query token beside the same without mask")
    _common(p, "ppma_viz_attention.png")
    p.set_defaults(func=_attention)

    p = vsub.add_parser("decay", help="learned horizontal / vertical decays of every stage over the image")
    _common(p, "ppma_viz_decay.png", head_default=None, block=False, query=False)
    p.add_argument("--block", type=int, default=-1, help="block of each stage (default -1: the last)")
    p.add_argument("--stage", type=int, action="append", help="a stage to show (repeatable; default all)")
    p.set_defaults(func=_decay)

    p = vsub.add_parser("sweep", help="animated GIF moving the query across the image")
    _common(p, "ppma_viz_sweep.gif", query=False)
    p.add_argument("--what", choices=("attention", "mask"), default="attention", help="map to animate")
    p.add_argument("--steps", type=int, default=6, help="queries per side of the lattice (default 6: 36 frames)")
    p.add_argument("--duration", type=int, default=300, help="milliseconds per frame")
    p.set_defaults(func=_sweep, dpi=80)


def _output_path(args: argparse.Namespace, default_suffix: str) -> Path:
    """The file that will be written, checked before any work: ``default_suffix`` added where there is no
    suffix (matplotlib would add it silently), a suffix no writer knows refused."""
    from .options import check_output_file

    out = Path(args.out)
    if not out.suffix:
        out = out.with_name(out.name + default_suffix)
    if default_suffix == ".gif":
        known = {".gif"}
    else:
        from matplotlib.figure import Figure

        known = {"." + k for k in Figure().canvas.get_supported_filetypes()}
    if out.suffix.lower() not in known:
        raise ValueError(f"-o: {out}: unknown image format {out.suffix!r}; use one of {', '.join(sorted(known))}")
    check_output_file(out, "-o")
    return out


def _capture(args: argparse.Namespace):
    with reading_checkpoint(args) as checkpoint:
        return _capture_with(args, checkpoint)


def _capture_with(args: argparse.Namespace, checkpoint: str | None):
    import sys

    from ..viz import run

    contents = None
    if checkpoint is not None and Path(checkpoint).is_file():
        from ..checkpoint import read_card, read_checkpoint

        contents = read_checkpoint(checkpoint)  # read once: the notes here, the model in run
        card, notes = read_card(contents), []
        if not (args.model or card["model_name"]):
            notes.append("names no model: assumed ppma_tiny (--model sets it)")
        if card["transform"] is None:
            notes.append("stores no normalisation: assumed ImageNet's mean and std")
        if notes:
            print(f"ppma viz: note: {Path(checkpoint).name} " + "; ".join(notes), file=sys.stderr)
    ema = {"auto": "auto", "ema": True, "model": False}[args.weights]
    return run(
        args.model, args.image, checkpoint=checkpoint, ema=ema, size=args.size, sample=args.sample, contents=contents
    )


def _mask(args: argparse.Namespace) -> None:
    from ..viz import render
    from ..viz.maps import polyline_mask
    from .options import check_output_file

    out = _output_path(args, ".png")
    matrix_out = out.with_name(f"{out.stem}_matrix{out.suffix}")
    if args.matrix is not None:  # both files checked before any work (the second was checked after the first)
        check_output_file(matrix_out, "-o (its _matrix picture)")
    if args.mask is not None:  # zoo masks (ppma.masks), validated before the model runs
        from ..masks import get_mask, mask_names

        names = mask_names() if args.mask == "all" else [get_mask(m.strip()).name for m in args.mask.split(",")]
        fig = render.zoo_mask_figure(_capture(args), names, args.query, args.stage, args.block,
                                     0 if args.head is None else args.head, dpi=args.dpi)  # fmt: skip
        print(render.save(fig, out))
        return
    cap = _capture(args)
    fig = render.mask_figure(cap, args.query, args.stage, args.block, args.head, log_mask_fn=polyline_mask,
                             dpi=args.dpi)  # fmt: skip
    matrix = None
    if args.matrix is not None:  # drawn before anything is saved: a window that does not fit writes no file
        head = 0 if args.head is None else args.head
        matrix = render.mask_matrix_figure(cap, args.query, args.stage, args.block, head, args.matrix, dpi=args.dpi)
    print(render.save(fig, out))
    if matrix is not None:
        print(render.save(matrix, matrix_out))


def _attention(args: argparse.Namespace) -> None:
    from ..viz import render

    out = _output_path(args, ".png")
    fig = render.attention_figure(_capture(args), args.query, args.stage, args.block, args.head, dpi=args.dpi)
    print(render.save(fig, out))


def _decay(args: argparse.Namespace) -> None:
    from ..viz import render

    out = _output_path(args, ".png")
    fig = render.decay_figure(_capture(args), args.block, args.head, args.stage, dpi=args.dpi)
    print(render.save(fig, out))


def _sweep(args: argparse.Namespace) -> None:
    from ..viz import render

    out = _output_path(args, ".gif")
    frames = render.sweep_frames(_capture(args), args.stage, args.block, args.head, args.what, args.steps, args.dpi)
    print(render.save_gif(frames, out, args.duration))
