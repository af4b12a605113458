"""Argument types and the flags of config dataclasses, shared by every sub-command.

``size`` is the one parser of ``HxW`` sizes; ``add_dataclass_flags`` / ``given_flags`` are the one
dataclass-to-flags generator (``ppma train``, ``ppma detect train``, ``ppma segment train``): one
``--field-name`` flag per field, typed from the annotation, help from ``field.metadata["help"]``,
``choices`` and an optional value (``const``: ``--resume`` alone) from the metadata too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from typing import Any

__all__ = ["add_dataclass_flags", "check_output_file", "given_flags", "int_list", "numbers", "predict_status",
           "said_skipped", "size"]  # fmt: skip


def numbers(text: str, kind: type = float) -> tuple:
    """'8,11' or '2048x512' -> a tuple of ``kind`` (commas and ``x`` both separate)."""
    parts = [p for p in re.split(r"[x,]", text.strip().lower()) if p.strip()]
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__}s like 8,11 or 2048x512, got {text!r}") from None


def size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '512x768' (or '512,768') -> (512, 768), as (height, width)."""
    values = numbers(text, int) if re.fullmatch(r"\d+([x,]\d+)?", text.strip().lower()) else ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 224 or 512x768, got {text!r}")
    return values[0], values[-1]


def int_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _parser_for(hint: Any):
    """A function text -> value for a field's type (``none`` gives None where allowed)."""
    base, optional = _base_type(hint)

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if base is dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
            return value
        if typing.get_origin(base) is tuple:
            kind = next((a for a in typing.get_args(base) if a is not Ellipsis), float)
            return numbers(text, kind)
        return base(text)

    parse.__name__ = getattr(base, "__name__", str(base))  # argparse names the type in its errors
    return parse


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls``; flags not given are absent from the
    namespace (``argparse.SUPPRESS``), so ``given_flags`` returns only what the user typed.

    Booleans are ``--x`` / ``--no-x``; ``tuple[int, ...]`` fields take ``8,11`` or ``2048x512``; ``dict``
    fields take JSON; optional fields also take ``none``. Field metadata: ``help``, ``choices``, and
    ``const`` (the flag may be given without a value, meaning ``const``).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                      help=f"{f.metadata.get('help', '')} (default: {default})".lstrip())  # fmt: skip
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if "const" in f.metadata:
            kwargs.update(nargs="?", const=f.metadata["const"])
        flag = "--" + f.name.replace("_", "-")
        if _base_type(hints[f.name])[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, type=_parser_for(hints[f.name]), metavar=f.name.upper(), **kwargs)


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given as flags (see ``add_dataclass_flags``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """Fail (one-line ``ValueError``) before any work when the output file ``path`` cannot be written:
    a folder there, or a parent that cannot be created or written. Creates the missing parent folders."""
    from pathlib import Path

    from .._checks import check_output_path

    if Path(path).is_dir():
        raise ValueError(f"{what}: {path} is a folder; expected a file name")
    check_output_path(path, what)


def said_skipped(record: dict) -> bool:
    """A predict record of an image that could not be read: its line on stderr (``ppma predict: skipped FILE:
    why``, the same in every predict command); True for such a record, whose result line is left out."""
    if "error" in record:
        print(f"ppma predict: skipped {record['error']}", file=sys.stderr)
    return "error" in record


def predict_status(records: list[dict]) -> int:
    """A predict command's exit status: 1 when an image was skipped (the others were predicted), else 0."""
    return 1 if any("error" in r for r in records) else 0
