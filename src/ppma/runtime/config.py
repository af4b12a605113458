"""Fields of the run config dataclasses (``TrainConfig``, ``DetectConfig``, ``SegmentConfig``): ``option``
attaches the help text (and ``choices`` / ``const``) that ``ppma.cli.options.add_dataclass_flags`` turns
into flags; ``resume_option`` is the one ``--resume`` of all three."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

__all__ = ["RESUME_HELP", "check_field_types", "option", "resume_option"]

RESUME_HELP = ("continue from a checkpoint or run folder; alone: the output folder's last.pth; "
               "auto: that file if it exists, else start fresh")  # fmt: skip


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its flag's help text (mutable defaults are copied per instance)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def resume_option() -> Any:
    """``resume: str | None``: None starts fresh; see ``ppma.runtime.resume_checkpoint`` for the values."""
    return option(None, RESUME_HELP, const="")


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` says (ints and number strings for floats, lists for tuples), or a
    one-line ``ValueError`` naming the field."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        kind = next((a for a in typing.get_args(hint) if a is not Ellipsis), Any)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list of numbers, got {value!r}")
        return tuple(_typed(name, v, kind) for v in value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; the user meant the number
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{name}: expected a number, got {value!r}")
    expected = {int: "an integer", bool: "true or false", str: "a string", dict: "a mapping"}.get(hint)
    if expected is None:
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):  # bool is an int subclass
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def check_field_types(config: Any) -> None:
    """Check (and normalise in place) every field of the config dataclass ``config`` against its annotation:
    a value from a YAML / JSON file or ``TrainConfig(**values)`` of the wrong type (``epochs: "3"``,
    ``ema: "false"``, ``batch_size: 32.5``) is a one-line ``ValueError`` naming the field, not a silently
    truthy string or a traceback deep in training."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        setattr(config, f.name, _typed(f.name, getattr(config, f.name), hints[f.name]))
