"""Fields of the run config dataclasses (``TrainConfig``, ``DetectConfig``, ``SegmentConfig``): ``option``
attaches the help text (and ``choices`` / ``const``) that ``ppma.cli.options.add_dataclass_flags`` turns
into flags; ``resume_option`` is the one ``--resume`` of all three."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["RESUME_HELP", "option", "resume_option"]

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
