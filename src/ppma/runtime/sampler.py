"""Samplers of a run: the resumable, shuffled training shard and the padding-free evaluation shard."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import DistInfo

__all__ = ["ResumableSampler", "ShardSampler", "resumable_loader"]


class ResumableSampler(Sampler[int]):
    """torch's ``DistributedSampler`` (shuffled by seed and epoch, padded to a multiple of the process
    count, every ``num_replicas``-th position from ``rank``) that can start ``skip`` positions into the
    epoch's order, to resume mid-epoch. It also tells the dataset the epoch (its ``set_epoch``, which seeds
    the items' augmentation).

    ``skip`` counts positions of the whole (padded) order, consumed by all processes together: after ``k``
    items per process of ``n`` processes those are exactly the first ``k * n``. So a run resumed with another
    process count goes on with the images the epoch has not trained yet (spread over the new processes),
    rather than reshuffling the shards; with the same count it continues exactly as one never stopped.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        self.dataset = dataset
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = _padded(torch.randperm(len(self.dataset), generator=g).tolist(), self.num_replicas)
        # A skip made under another process count leaves a remainder: pad again, so that every process
        # gets as many items (with the same count nothing is added).
        rest = _padded(order[self.skip :], self.num_replicas)
        return iter(rest[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        n = len(self.dataset)
        return math.ceil(max(n + -n % self.num_replicas - self.skip, 0) / self.num_replicas)


def _padded(items: list[int], multiple: int) -> list[int]:
    """``items`` followed by its own start (repeated if short) up to a multiple of ``multiple``: torch's
    ``DistributedSampler`` padding, so that runs shuffle as they always have."""
    missing = -len(items) % multiple
    if not items or not missing:
        return items
    return items + (items * math.ceil(missing / len(items)))[:missing]


class ShardSampler(Sampler[int]):
    """Every ``num_replicas``-th index from ``rank``, in order, without padding: exact metrics after a sum."""

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, n, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def resumable_loader(
    dataset: Dataset, batch_size: int, info: DistInfo, seed: int, workers: int, collate_fn: Any, drop_last: bool
) -> tuple[ResumableSampler, DataLoader]:
    """A training loader and its sampler (``set_epoch(epoch, skip)``) that resume mid-epoch exactly.

    Shuffled by (seed, epoch), augmentation seeded per item (the dataset's ``seed`` and ``set_epoch``), a
    private generator for the worker seeds (no draw from the global RNG when an epoch starts): a run
    resumed mid-epoch sees the same batches and draws the same random numbers as one never stopped.
    """
    dataset.seed = seed
    sampler = ResumableSampler(dataset, info.world_size, info.rank, seed)
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        drop_last=drop_last, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return sampler, loader
