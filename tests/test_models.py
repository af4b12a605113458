"""The timm-registered PPMA models: sizes, parameters, gradients, features, published equivalence, errors."""

from __future__ import annotations

import random
import re

import pytest
import timm
import torch

import ppma  # noqa: F401  (registers the models)
from ppma.flops import count_macs
from ppma.masks import rmt_log_gamma

VARIANTS = ["ppma_tiny", "ppma_small", "ppma_base"]
PUBLISHED_PARAMS = {"ppma_tiny": 14.335e6, "ppma_small": 26.969e6, "ppma_base": 54.159e6}  # design.md §6
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


@pytest.mark.parametrize("out_indices", [(1, 3), (0, 1)])
def test_features_only_subset_gives_every_parameter_a_gradient(out_indices):
    """The LayerNorms of stages not returned were kept: parameters without gradient, which DDP refuses
    (find_unused_parameters=False, its default). Kept ones are the full backbone's, same weights."""
    state = torch.random.get_rng_state()  # the same initial weights for both
    full = timm.create_model("ppma_nano", features_only=True).double().train()
    torch.random.set_rng_state(state)
    part = timm.create_model("ppma_nano", features_only=True, out_indices=out_indices).double().train()
    x = torch.randn(2, 3, 64, 45, dtype=torch.float64)
    want = [full(x)[i] for i in out_indices]
    got = part(x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    sum(f.logsumexp(1).sum() for f in got).backward()
    assert [n for n, p in part.named_parameters() if p.grad is None] == []


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
    for x, want32, want64 in zip(ckpt["inputs"], ckpt["logits_float32"], ckpt["logits_float64"], strict=True):
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
        (torch.randn(1, 3, 32, 32, dtype=torch.bfloat16), "dtype torch.bfloat16, but the model's weights"),
        (torch.randn(1, 3, 32, 32, dtype=torch.float64), "dtype torch.float64, but the model's weights"),
    ],
)
def test_bad_input_raises_value_error(x, match):
    model = timm.create_model("ppma_nano")
    with pytest.raises(ValueError, match=match):
        model(x)


def test_other_input_dtypes_run_under_autocast_or_a_cast_model():
    """The dtype check (a one-line error instead of the first convolution's RuntimeError) leaves autocast alone."""
    model = timm.create_model("ppma_nano").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16()).shape == (2, 10)
    with torch.no_grad():
        want = model.double()(x.double())
        assert want.dtype == torch.float64 and torch.isfinite(want).all()


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


def test_paired_seeds_give_every_shared_weight_the_same_initial_value():
    """At one seed, the decay generator draws from its own stream: every other weight is the same for every kind."""
    states = {}
    for mask in ("none", "polyline", "rmt", "hilbert", "h2v", "polyline_shared"):
        torch.manual_seed(0)
        kwargs = dict(decomposed=(False,) * 4) if mask == "hilbert" else {}
        states[mask] = timm.create_model("ppma_nano", mask=mask, **kwargs).state_dict()
    base = states["none"]
    assert "stages.0.blocks.0.attn.q_proj.weight" in base
    for mask, state in states.items():
        shared = [k for k in state if k in base and state[k].shape == base[k].shape]
        assert len(shared) == len(base)  # every weight of `none` is in every kind
        assert all(torch.equal(state[k], base[k]) for k in shared), mask
    decay = "stages.2.blocks.1.attn.decay.A_log"
    assert torch.equal(states["polyline"][decay], states["hilbert"][decay])  # the decays pair too
    assert not torch.equal(states["polyline"][decay], states["polyline"]["stages.2.blocks.0.attn.decay.A_log"])
    torch.manual_seed(1)
    assert not torch.equal(timm.create_model("ppma_nano").state_dict()[decay], states["polyline"][decay])


def test_decay_initial_values_keep_the_published_distributions():
    torch.manual_seed(0)
    model = timm.create_model("ppma_tiny", num_classes=10)
    decays = [m for m in model.modules() if isinstance(m, ppma.PathDecay)]
    A = torch.cat([d.A_log.detach() for d in decays]).exp()
    dt = torch.nn.functional.softplus(torch.cat([d.dt_bias.detach() for d in decays]))
    w = torch.cat([d.dt_linear.weight.detach().flatten() for d in decays])
    assert 1.0 <= A.min() and A.max() <= 1.1 and A.std() > 0.01
    assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 1e-1 * 1.001
    assert 0.015 < w.std() < 0.025 and w.abs().max() < 0.12  # trunc_normal_(std=0.02): cut at +-2 absolute


def test_drop_rate_drops_before_the_classifier_in_training_only():
    model = timm.create_model("ppma_nano", drop_rate=0.5)
    assert isinstance(model.head.drop, torch.nn.Dropout) and model.head.drop.p == 0.5
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), model.head.fc(feats))
        model.train()
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="drop_rate"):
        timm.create_model("ppma_nano", drop_rate=1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backend="nope"), "backend: unknown name 'nope'"),
        (dict(drop_path_rate=1.5), r"drop_path_rate: expected a probability in \[0, 1\), got 1.5"),
        (dict(drop_path_rate=-0.1), "drop_path_rate"),
        (dict(num_classes=-1), "num_classes: expected an integer >= 0, got -1"),
        (dict(in_chans=0), "in_chans: expected an integer >= 1, got 0"),
    ],
)
def test_bad_constructor_arguments_fail_when_built(kwargs, match):
    """They failed at the first (training) forward, deep in DropPath, or were silently taken as 0."""
    with pytest.raises(ValueError, match=match):
        timm.create_model("ppma_nano", **kwargs)


def test_rmt_uses_rmts_decays_per_variant():
    """RMT-B's heads ranges are (5, 5, 6, 6), RMT-T/S's (4, 4, 6, 6); initial value 2 everywhere."""
    small = dict(depths=(1, 1, 1, 1), head_hidden_size=8, num_classes=2)  # the variants' heads, less compute
    base = timm.create_model("ppma_base", mask="rmt", **small)
    got = base.stages[0].blocks[0].attn.decay.log_gamma.exp()
    torch.testing.assert_close(got, torch.tensor([0.75, 0.875, 0.9375, 0.96875, 0.984375], dtype=torch.float64))
    for name, ranges in (("ppma_base", (5, 5, 6, 6)), ("ppma_tiny", (4, 4, 6, 6)), ("ppma_small", (4, 4, 6, 6))):
        model = base if name == "ppma_base" else timm.create_model(name, mask="rmt", **small)
        for stage, heads_range in zip(model.stages, ranges, strict=True):
            decay = stage.blocks[0].attn.decay
            want = rmt_log_gamma(decay.num_heads, 2.0, heads_range)
            torch.testing.assert_close(decay.log_gamma, want, rtol=0, atol=0)


def test_global_pool_empty_gives_per_token_logits_whose_mean_is_the_pooled_logits():
    """timm's global_pool='' (constructor or reset_classifier) skips pooling; it was ignored (pooled logits)."""
    pooled = timm.create_model("ppma_nano", num_classes=5).double().eval()
    tokens = timm.create_model("ppma_nano", num_classes=5, global_pool="").double().eval()
    tokens.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 3, 70, 45, dtype=torch.float64)
    with torch.no_grad():
        want = pooled(x)
        got = tokens(x)
        assert got.shape == (2, 3, 2, 5)  # (B, H/32, W/32, classes), NHWC like timm's Swin
        torch.testing.assert_close(got.mean(dim=(1, 2)), want, rtol=0, atol=1e-12)
        assert tokens.forward_head(tokens.forward_features(x), pre_logits=True).shape == (2, 3, 2, 1024)
        pooled.reset_classifier(5, global_pool="")  # a new (float32) fc: give it the other model's
        pooled.head.fc = tokens.head.fc
        torch.testing.assert_close(pooled(x), got, rtol=0, atol=0)
        pooled.reset_classifier(0)  # None keeps the pooling
        assert pooled(x).shape == (2, 3, 2, 1024)
        pooled.reset_classifier(0, global_pool="avg")
        assert pooled(x).shape == (2, 1024)
    for make in (lambda: timm.create_model("ppma_nano", global_pool="max"),
                 lambda: tokens.reset_classifier(5, global_pool="max")):  # fmt: skip
        with pytest.raises(ValueError, match="global_pool"):
            make()


def test_reset_other_then_a_classifier_gives_logits_of_the_pooled_stage_tokens():
    """reset_classifier(0, reset_other=True) (timm's prune) drops the head's projection; a later reset_classifier(5)
    gave 256 features silently (the new fc was never called) and get_classifier() raised AttributeError."""
    model = timm.create_model("ppma_nano").double().eval()
    x = torch.randn(2, 3, 45, 61, dtype=torch.float64)
    model.reset_classifier(0, reset_other=True)
    assert model.head_hidden_size == model.num_features == 256
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model(x), tokens.mean(dim=(1, 2)), rtol=0, atol=0)
        model.reset_classifier(5)
        fc = model.get_classifier().double()
        assert fc.in_features == 256
        torch.testing.assert_close(model(x), tokens.mean(dim=(1, 2)) @ fc.weight.T + fc.bias, rtol=0, atol=1e-12)
        model.reset_classifier(0, global_pool="")
        torch.testing.assert_close(model(x), tokens, rtol=0, atol=0)
    assert not any(k.startswith("head.") for k in model.state_dict())


@pytest.mark.parametrize("out_indices, message", [
    ((-5,), "stages are 0..3 (or -4..-1), got (-5,)"), ((4,), "stages are 0..3 (or -4..-1), got (4,)"),
    ((), "stages are 0..3"), ((1, -3), "a stage named twice"), (5, "an int takes the last n stages, n in 1..4, got 5"),
])  # fmt: skip
def test_features_only_out_indices_are_checked_in_one_line(out_indices, message):
    """timm said 'feature index -1 is out of range' for -5 (an AssertionError), and (1, -3) gave stage 1 twice."""
    with pytest.raises(ValueError, match=re.escape(f"out_indices: {message}")):
        timm.create_model("ppma_nano", features_only=True, out_indices=out_indices)
    picked = random.sample(range(4), random.randint(1, 4))
    negative = [i - 4 if random.random() < 0.5 else i for i in picked]
    model = timm.create_model("ppma_nano", features_only=True, out_indices=tuple(negative))
    assert model.feature_info.channels() == [(32, 64, 128, 256)[i] for i in picked]
