"""What a classification run shows besides its log (``ppma.runtime.RunLog``): a progress bar (rank 0,
terminal only; ``ppma.runtime.progress_bar``, shared with the dense tasks) and a PNG of the loss and
accuracy curves at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runtime.log import progress_bar  # re-exported: the one bar of every task lives in the runtime

__all__ = ["plot_curves", "progress_bar"]


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
