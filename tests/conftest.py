"""Shared test set-up: fresh random inputs every run (the seed is printed on failure), float64 helpers."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from timm.models import generate_default_cfgs, register_model

import ppma.models.ppma as ppma_models

# The published micro fixture lives in the repository (tests/fixtures/README.md), so the equivalence
# tests run on every clone; the larger nano fixture is an optional extra beside the checkout.
PUBLISHED_MICRO = Path(__file__).resolve().parent / "fixtures" / "published_micro.pth"
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PUBLISHED_NANO = Path(os.environ.get("PPMA_FIXTURE", FIXTURES / "published_nano.pth"))

# The micro fixture's configuration as a timm name, so that commands taking --model can load it.
MICRO_CONFIG = dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
# timm's register_model reads this module's default_cfgs: the transform defaults of ppma_nano.
default_cfgs = generate_default_cfgs({"ppma_micro_fixture.untrained": ppma_models.default_cfgs["ppma_nano"].cfgs["untrained"]})


@register_model
def ppma_micro_fixture(pretrained: bool = False, **kwargs):
    """ppma_nano at the size of tests/fixtures/published_micro.pth (tests only)."""
    return ppma_models.ppma_nano(pretrained, **dict(MICRO_CONFIG, **kwargs))


class Published(dict):
    """A published fixture's contents, with the file (``path``) and the timm model name that fits it (``model``)."""

    def __init__(self, path: Path, model: str, contents: dict) -> None:
        super().__init__(contents)
        self.path, self.model = path, model


def _read_published(path: Path, model: str) -> Published:
    from ppma.checkpoint import read_checkpoint

    return Published(path, model, read_checkpoint(path))


@pytest.fixture
def checkpoint_reads(monkeypatch) -> list[Path]:
    """The files ``torch.load`` reads during a test, resolved, one entry per read: a command that reads its
    checkpoint twice shows it twice."""
    reads, real = [], torch.load

    def counting(f, *args, **kwargs):
        if isinstance(f, str | os.PathLike):
            reads.append(Path(f).resolve())
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return reads


@pytest.fixture
def atomic_renames(monkeypatch) -> list[tuple[str, str, bytes]]:
    """The renames ``ppma.checkpoint``'s atomic writers (``atomic_write_text``, ``atomic_save``) make during a
    test, one ``(temporary file, destination, the bytes it held)`` each: a file written through them was
    complete beside its destination before it took its name."""
    renames, real = [], os.replace

    def replace(src, dst):
        renames.append((str(src), str(dst), Path(src).read_bytes()))
        real(src, dst)

    import ppma.checkpoint

    monkeypatch.setattr(ppma.checkpoint.os, "replace", replace)
    return renames


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


@pytest.fixture(params=["micro", "nano"])
def published(request) -> Published:
    """Each published fixture: micro (in the repository, always) and nano (when present beside the checkout)."""
    if request.param == "micro":
        return _read_published(PUBLISHED_MICRO, "ppma_micro_fixture")
    if not PUBLISHED_NANO.is_file():
        pytest.skip(f"optional published nano fixture not found at {PUBLISHED_NANO}")
    return _read_published(PUBLISHED_NANO, "ppma_nano")
