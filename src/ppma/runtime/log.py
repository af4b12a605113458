"""The one log writer of a run: a JSON line per record in ``log.jsonl``, a console line, TensorBoard if asked;
and the one progress bar (``progress_bar``) of training, evaluation and prediction, all tasks.

Only rank 0 writes; other ranks get a writer that does nothing, so callers need no rank checks.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "console_line", "progress_bar"]


def progress_bar(
    iterable: Iterable | None, total: int, desc: str, enabled: bool | None, rank: int, initial: int = 0
) -> Any:
    """tqdm over ``iterable`` on rank 0 when stderr is a terminal (or ``enabled``); otherwise a silent tqdm.

    A disabled tqdm still accepts ``set_postfix`` and ``update``, so the loop needs no branch. ``iterable``
    None: a bar moved by ``update``; ``initial``: where a resumed run starts on it (of ``total``).
    """
    from tqdm.auto import tqdm

    show = (sys.stderr.isatty() if enabled is None else enabled) and rank == 0
    return tqdm(iterable, total=total, desc=desc, disable=not show, dynamic_ncols=True, leave=False, initial=initial)


def console_line(record: dict[str, Any], show: tuple[str, ...] = ()) -> str:
    """``key value`` pairs (floats to 4 significant digits), only the ``show`` keys when given."""
    shown = {k: v for k, v in record.items() if not show or k in show}
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


class RunLog:
    """``log.jsonl`` in ``folder`` plus the console (unless ``quiet``) plus TensorBoard (``tensorboard``).

    Args:
        folder: the run folder (None: console only).
        active: False on every rank but 0.
        quiet: no console lines (the JSON lines are still written).
        tensorboard: also write ``folder/tensorboard`` (needs the ``tensorboard`` package).
    """

    def __init__(
        self, folder: Path | None, active: bool = True, quiet: bool = False, tensorboard: bool = False
    ) -> None:
        self.folder, self.active, self.quiet = folder, active, quiet
        self.tb = None
        if active and tensorboard and folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "tensorboard: not installed (pip install tensorboard); logging to log.jsonl only", stacklevel=2
                )

    def print(self, text: str) -> None:
        """A console line (rank 0, not quiet)."""
        if self.active and not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(text)  # a bar on the terminal is cleared and redrawn below the line, not written through
            sys.stdout.flush()

    def write(self, record: dict[str, Any], line: str | None = None, step_key: str | None = None) -> None:
        """Append ``record`` to ``log.jsonl`` and print ``line`` (default: ``console_line(record)``); its
        numbers go to TensorBoard at ``record[step_key]``."""
        if not self.active:
            return
        if self.folder is not None:
            with open(self.folder / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        self.print(console_line(record) if line is None else line)
        if self.tb is not None and step_key is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != step_key:
                    self.tb.add_scalar(key, value, record[step_key])
            self.tb.flush()

    def restart(self, records: list[dict[str, Any]]) -> None:
        """Make ``log.jsonl`` hold exactly ``records`` (a resumed run's history), written atomically: a run
        resumed into a new folder logs its earlier epochs too, and a kill between the checkpoint and the
        log line leaves no gap (nor a doubled line)."""
        if self.active and self.folder is not None:
            from ..checkpoint import atomic_write_text

            atomic_write_text(self.folder / "log.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
