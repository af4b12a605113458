"""What a run shows and leaves behind: a progress bar (rank 0, terminal only), one JSON line per epoch,
an optional TensorBoard log, and a PNG of the loss and accuracy curves at the end."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Reporter", "plot_curves", "progress_bar"]


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool | None, rank: int) -> Any:
    """tqdm over ``iterable`` on rank 0 when stderr is a terminal (or ``enabled``); otherwise a silent tqdm.

    A disabled tqdm still accepts ``set_postfix``, so the loop needs no branch.
    """
    from tqdm.auto import tqdm

    show = (sys.stderr.isatty() if enabled is None else enabled) and rank == 0
    return tqdm(iterable, total=total, desc=desc, disable=not show, dynamic_ncols=True, leave=False)


class Reporter:
    """Rank 0's writer: ``log.jsonl`` (one line per epoch), a one-line summary on stdout, TensorBoard if asked.

    Other ranks get a reporter that does nothing, so callers need no rank checks.
    """

    def __init__(self, output_dir: Path, rank: int, tensorboard: bool) -> None:
        self.active = rank == 0
        self.log_path = output_dir / "log.jsonl"
        self.tb = None
        if self.active and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "tensorboard: not installed (pip install tensorboard); logging to log.jsonl only", stacklevel=2
                )

    def print(self, text: str) -> None:
        if self.active:
            print(text, flush=True)

    def epoch(self, record: dict[str, Any]) -> None:
        """Append ``record`` to log.jsonl, print its summary, and add its numbers to TensorBoard."""
        if not self.active:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        ema = f"  ema top-1 {record['ema_top1']:.2f}" if record.get("ema_top1") is not None else ""
        self.print(
            f"epoch {record['epoch']:>3}/{record['epochs']}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"val top-1 {record['top1']:.2f} top-5 {record['top5']:.2f}{ema}  "
            f"{record['train_images_per_s']:.0f} img/s  {record['time_s']:.0f} s"
        )
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "epochs"):
                    self.tb.add_scalar(key, value, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss (train, val) and validation top-1 (model, EMA) per epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["loss"] for r in history], label="val")
    ax_acc.plot(epochs, [r["top1"] for r in history], label="val top-1")
    if any(r.get("ema_top1") is not None for r in history):
        ax_acc.plot(epochs, [r.get("ema_top1") for r in history], label="val top-1 (EMA)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
