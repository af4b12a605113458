"""Random states: seeding, the capture and restore of every rank's states in a checkpoint, and a block
that leaves them untouched (an evaluation inside a run), so that a resumed run draws the same numbers."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .distributed import DistInfo

__all__ = ["all_rng_states", "capture_rng", "restore_rank_rng", "restore_rng", "rng_untouched", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) generators with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as tensors and ints."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # ("MT19937", (624,) uint32, int, int, float)
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                   "gauss": float(gauss)}  # fmt: skip
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state,
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain types
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's ``capture_rng()``, in rank order. A collective: every rank calls it at the same step."""
    return info.all_gather(capture_rng())


def restore_rank_rng(states: Any, info: DistInfo, reseed: int) -> bool:
    """Restore this rank's entry of ``all_rng_states``; returns False (after seeding with ``reseed + rank``)
    when the file was written by another number of processes, so its states cannot be matched to ranks."""
    if isinstance(states, list) and len(states) == info.world_size:
        restore_rng(states[info.rank])
        return True
    seed_everything(reseed + info.rank)
    return False


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Give torch's random states (CPU, and ``device`` if CUDA) back after the block: an evaluation inside
    a training run then leaves the run's random numbers as they were, so resuming is exact either way."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
