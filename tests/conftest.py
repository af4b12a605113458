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


def check_layer_compiles_like_eager(mode: str, backend: str) -> None:
    """One small PPMA attention layer under torch.compile: dynamo sees one graph, no breaks, and the
    traced forward and backward graphs (aot_eager: AOT autograd without inductor) give eager's output
    and input gradient."""
    from ppma.layers import FlatRotary, PolylineAttention

    torch._dynamo.reset()
    layer = PolylineAttention(32, 4, mode=mode, backend=backend)
    x = torch.randn(1, 5, 6, 32, requires_grad=True)
    rotary = FlatRotary(8)(5, 6)
    explanation = torch._dynamo.explain(layer)(x, rotary)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    want = layer(x, rotary)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    got = torch.compile(layer, backend="aot_eager", fullgraph=True)(x, rotary)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.fixture
def published_nano():
    if not PUBLISHED_NANO.is_file():
        pytest.skip(f"published fixture not found at {PUBLISHED_NANO}")
    from ppma.checkpoint import read_checkpoint

    return read_checkpoint(PUBLISHED_NANO)
