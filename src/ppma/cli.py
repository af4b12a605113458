"""The ``ppma`` command: argparse sub-commands, each a few lines that call one library function.

Each feature area registers its sub-commands in its own ``cli`` module (a ``register(subparsers)``
function) listed in ``_COMMAND_MODULES``. Known errors (``ValueError``, ``FileNotFoundError``,
``PPMAError``) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import PPMAError

# Modules with a `register(subparsers)` function; each adds its own sub-commands.
_COMMAND_MODULES = [
    "ppma.cli_core",
    "ppma.train.cli",
    "ppma.viz.cli",
    "ppma.dense.cli",
    "ppma.cli_ablate",
    "ppma.cli_export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppma", description="Polyline Path Masked Attention: models, training, tools")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, PPMAError) as e:
        if args.debug:
            raise
        message = str(e).strip() or type(e).__name__
        print(f"ppma {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppma {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
