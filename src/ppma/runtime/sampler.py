"""Samplers of a run: the resumable, shuffled training shard and the padding-free evaluation shard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import DistInfo

__all__ = ["ResumableSampler", "ShardSampler", "resumable_loader"]


class ResumableSampler(Sampler[int]):
    """torch's ``DistributedSampler`` (shuffled by seed and epoch, one shard per process) that can start
    ``skip`` items into the epoch, to resume mid-epoch. It also tells the dataset the epoch (its
    ``set_epoch``, which seeds the items' augmentation)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        from torch.utils.data.distributed import DistributedSampler

        self.dataset = dataset
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


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
