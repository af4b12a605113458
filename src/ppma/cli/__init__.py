"""The ``ppma`` command: every sub-command, each a few lines that parse, call one library function, print.

This package is the only place in ``ppma`` that imports ``argparse``. Its modules:

| module | sub-commands |
|---|---|
| ``core`` | ``info``, ``convert``, ``backends`` |
| ``train`` | ``train``, ``eval``, ``predict`` |
| ``dense`` | ``detect train|eval|predict``, ``segment train|eval|predict`` |
| ``viz`` | ``viz mask|attention|decay|sweep`` |
| ``ablate`` | ``ablate`` |
| ``export`` | ``export`` (timm format, ONNX); ``--pretrained`` for predict / eval / viz |
| ``options`` | shared argument types (``size``: the one ``HxW`` parser) and ``add_dataclass_flags`` / |
| | ``given_flags``: the one generator of flags from a config dataclass |

**Adding a sub-command is a one-file job**: write ``ppma/cli/NAME.py`` with a function
``register(sub)`` that calls ``sub.add_parser("NAME", help=...)``, adds its arguments (types from
``options``) and ``set_defaults(func=_handler)``; ``_handler(args)`` imports the library lazily, does
the work and prints. Then add ``"NAME"`` to ``COMMAND_MODULES`` below. To add a flag to existing
sub-commands (``--precision`` for ``eval`` and ``predict``), edit their ``register`` in ``train.py``.
Known errors (``ValueError``, ``FileNotFoundError``, ``PPMAError``, and the ``OSError`` kinds of a path that
is a file where a folder belongs or not permitted) print one line
``ppma COMMAND: error: ...`` and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import PPMAError
from ..runtime.run_folder import RunStopped

# Modules of this package with a `register(subparsers)` function, in the order of `ppma --help`.
COMMAND_MODULES = ["core", "train", "viz", "dense", "ablate", "export"]


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags (argparse read ``ppma train --epoch 3`` as ``--epochs 3``): a typo is an error.
    Sub-command parsers are of the class of their parent (``add_subparsers``), so every level is one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ppma", description="Polyline Path Masked Attention: models, training, tools")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except RunStopped as e:  # SIGTERM / SIGINT during training: saved, resumable
        print(f"ppma {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except (ValueError, FileNotFoundError, PPMAError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:  # fmt: skip
        if args.debug:
            raise
        message = str(e).strip() or type(e).__name__
        if isinstance(e, OSError) and e.filename and not isinstance(e, FileNotFoundError):
            # was a traceback: a file where a folder belongs (--output FILE), a folder where a file does, no permission
            what = {FileExistsError: "a file where a folder is needed", NotADirectoryError: "a file where a folder "
                    "is needed", IsADirectoryError: "a folder where a file is needed"}.get(type(e))  # fmt: skip
            path = e.filename2 or e.filename  # a rename (atomic writes): the destination is the path given
            message = f"{path}: {what or (e.strerror or type(e).__name__).lower()}"
        print(f"ppma {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppma {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


