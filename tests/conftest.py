"""Shared test set-up: fresh random inputs every run (the seed is printed on failure), float64 helpers."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PUBLISHED_NANO = Path(os.environ.get("PPMA_FIXTURE", FIXTURES / "published_nano.pth"))


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """A new seed per test, reported in the failure output so a failure can be replayed."""
    seed = int(os.environ.get("PPMA_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    random.seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        for name, value in item.user_properties:
            if name == "seed":
                item.add_report_section(call.when, "seed", f"replay with PPMA_TEST_SEED={value}")


def random_decays(*shape: int, dtype=torch.float64, scale: float = 2.0) -> torch.Tensor:
    """Strictly negative log-decays, never zero."""
    return -(torch.rand(*shape, dtype=dtype) * scale + 1e-3)


@pytest.fixture
def published_nano():
    if not PUBLISHED_NANO.is_file():
        pytest.skip(f"published fixture not found at {PUBLISHED_NANO}")
    from ppma.checkpoint import read_checkpoint

    return read_checkpoint(PUBLISHED_NANO)
