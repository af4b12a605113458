"""The timm-registered PPMA models: sizes, parameters, gradients, features, published equivalence, errors."""

from __future__ import annotations

import pytest
import timm
import torch

import ppma  # noqa: F401  (registers the models)
from ppma.flops import count_macs

VARIANTS = ["ppma_tiny", "ppma_small", "ppma_base"]
PUBLISHED_PARAMS = {"ppma_tiny": 14.335e6, "ppma_small": 26.969e6, "ppma_base": 54.159e6}  # SPEC section 6
PUBLISHED_GFLOPS = {"ppma_tiny": 2.71, "ppma_small": 4.92, "ppma_base": 10.63}


def test_all_variants_are_registered():
    assert set(VARIANTS + ["ppma_nano"]) <= set(timm.list_models("ppma_*"))


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_equals_published(name):
    model = timm.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(PUBLISHED_PARAMS[name], abs=500)


@pytest.mark.parametrize("name", VARIANTS)
def test_gflops_equal_published(name):
    model = timm.create_model(name)
    assert count_macs(model, (1, 3, 224, 224)) / 1e9 == pytest.approx(PUBLISHED_GFLOPS[name], rel=0.02)


@pytest.mark.parametrize("name", ["ppma_nano", *VARIANTS])
@pytest.mark.parametrize("size", [(64, 64), (57, 97)])
def test_forward_any_input_size(name, size):
    model = timm.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_forward_at_larger_non_square_size():
    model = timm.create_model("ppma_tiny", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 225, 300)).shape == (1, 5)


@pytest.mark.parametrize("name", ["ppma_nano", *VARIANTS])
@pytest.mark.parametrize("size", [(64, 80), (45, 33)])
def test_backward_reaches_every_parameter(name, size):
    model = timm.create_model(name, num_classes=4, drop_path_rate=0.0).train()  # drop path could zero a branch
    model(torch.randn(2, 3, *size)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no or non-finite gradient: {missing}"
    assert model.stages[3].blocks[0].attn.decay.A_log.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ppma_nano", "ppma_tiny"])
def test_features_only_gives_four_normalised_stage_maps(name):
    model = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 96, 64))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [tuple(f.shape[2:]) for f in feats] == [(24, 16), (12, 8), (6, 4), (3, 2)]
    # Each map went through its own LayerNorm (weight 1, bias 0 at init): zero mean over channels.
    for f in feats:
        assert f.mean(dim=1).abs().max() < 1e-4


def test_features_only_selected_indices():
    model = timm.create_model("ppma_nano", features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 256]


def test_forward_intermediates_agrees_with_forward_features():
    model = timm.create_model("ppma_nano").eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert len(inter) == 4
    torch.testing.assert_close(inter[-1], final.permute(0, 3, 1, 2))


def test_logits_equal_published_model(published):
    """The published code's own outputs on its own weights (fixture), float32 and float64."""
    ckpt = published
    model = timm.create_model(published.model, num_classes=10).eval()
    from ppma.checkpoint import load_into

    load_into(model, published.path)
    for x, want32, want64 in zip(ckpt["inputs"], ckpt["logits_float32"], ckpt["logits_float64"]):
        with torch.no_grad():
            torch.testing.assert_close(model(x.float()), want32, rtol=0, atol=1e-4)
            got64 = model.double()(x)
            model.float()
        assert (got64 - want64).abs().max() <= 1e-10 * want64.abs().max()


@pytest.mark.parametrize("backend", ["reference", "dense"])
def test_logits_equal_across_backends(backend):
    model = timm.create_model("ppma_nano").eval()
    x = torch.randn(2, 3, 61, 45)
    with torch.no_grad():
        model.set_backend("reference")
        want = model(x)
        model.set_backend(backend)
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(2, 4, 32, 32), "3 channels"),
        (torch.randn(3, 32), "image batch"),
        (torch.randn(0, 3, 32, 32), "empty batch"),
        (torch.randint(0, 255, (1, 3, 32, 32)), "floating-point"),
    ],
)
def test_bad_input_raises_value_error(x, match):
    model = timm.create_model("ppma_nano")
    with pytest.raises(ValueError, match=match):
        model(x)


def test_unknown_backend_is_rejected_when_set():
    model = timm.create_model("ppma_nano")
    with pytest.raises(ValueError, match="valid backends"):
        model.set_backend("nope")


def test_published_initialisation_statistics():
    model = timm.create_model("ppma_tiny")
    attn = model.stages[2].blocks[0].attn
    assert attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert attn.q_proj.bias.abs().max() == 0
    A = attn.decay.A_log.exp()
    assert ((A >= 1) & (A <= 1.1)).all()
    dt = torch.nn.functional.softplus(attn.decay.dt_bias)  # the inverse softplus of the drawn dt
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 1e-1 + 1e-7)).all()
    assert attn.decay.dt_linear.weight.shape == (2, 32)  # d = 256 / 8 heads, one matrix shared by heads
