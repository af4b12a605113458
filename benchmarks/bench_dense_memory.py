"""Backbone memory at detection resolution: peak resident memory of one forward (and backward) on CPU.

Run one configuration per fresh process, so the process's peak (``ru_maxrss``) belongs to it alone::

    python benchmarks/bench_dense_memory.py --model ppma_tiny --size 800x1344            # inference forward
    python benchmarks/bench_dense_memory.py --model ppma_tiny --size 800x1344 --train    # forward + backward
    python benchmarks/bench_dense_memory.py --model ppma_tiny --size 800x1344 --train --grad-checkpointing all

800x1344 is what the backbone sees for an 800x1333 image: Mask R-CNN pads to a multiple of 32.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from ppma.cli.options import size
from ppma.dense import create_backbone

__all__ = ["measure_backbone_memory"]


def _rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_backbone_memory(
    name: str = "ppma_tiny",
    size: tuple[int, int] = (800, 1344),
    batch: int = 1,
    train: bool = False,
    grad_checkpointing: str | None = None,
) -> dict[str, float]:
    """Peak extra resident memory of one backbone pass over a (batch, 3, H, W) input, in MiB.

    ``train``: forward with autograd, then backward (train-mode BatchNorm); otherwise ``torch.no_grad``.
    The figure is the process's peak RSS minus its RSS just before the pass (model and input already
    allocated), so call it once per fresh process.
    """
    backbone = create_backbone(name, grad_checkpointing=grad_checkpointing).train(train)
    x = torch.randn(batch, 3, *size)
    before = _rss_mib()
    t0 = time.time()
    if train:
        feats = backbone(x)
        sum(f.float().square().mean() for f in feats).backward()
    else:
        with torch.no_grad():
            feats = backbone(x)
    seconds = time.time() - t0
    return dict(
        model=name,
        height=size[0],
        width=size[1],
        batch=batch,
        train=train,
        grad_checkpointing=grad_checkpointing or "none",
        baseline_mib=round(before, 1),
        peak_extra_mib=round(_peak_rss_mib() - before, 1),
        seconds=round(seconds, 1),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ppma_tiny")
    p.add_argument("--size", type=size, default=(800, 1344), help="HxW (default 800x1344)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train", action="store_true")
    p.add_argument("--grad-checkpointing", default=None)
    a = p.parse_args()
    print(json.dumps(measure_backbone_memory(a.model, a.size, a.batch, a.train, a.grad_checkpointing)))


if __name__ == "__main__":
    main()
