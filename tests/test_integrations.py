"""The zoo mask inside a timm VisionTransformer (ppma.integrations.vit) and on token sequences."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import random_decays
from naive import naive_polyline_log_mask

from ppma.integrations import PolylineViTAttention, masked_token_attention, to_ppma
from ppma.masks import MASKS


def _vit(**kwargs) -> torch.nn.Module:
    args = {"pretrained": False, "img_size": 64, "depth": 3}
    return timm.create_model("vit_tiny_patch16_224", **dict(args, **kwargs)).double().eval()


def _zero_decays(model: torch.nn.Module) -> None:
    # a = -exp(A_log) = -0: every log-decay is exactly 0, i.e. no decay anywhere.
    for m in model.modules():
        if isinstance(m, PolylineViTAttention):
            m.decay.A_log.data.fill_(float("-inf"))


@pytest.mark.parametrize(
    "kwargs,size",
    [
        ({}, (64, 64)),
        ({"reg_tokens": 2, "dynamic_img_size": True}, (48, 80)),
        ({"class_token": False, "global_pool": "avg"}, (64, 64)),
    ],
)
def test_vit_plugin_with_zero_decays_equals_the_unmodified_model(kwargs, size):
    plain = _vit(**kwargs)
    converted = to_ppma(copy.deepcopy(plain)).double().eval()
    _zero_decays(converted)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), plain(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(converted.forward_features(x), plain.forward_features(x), rtol=1e-12, atol=1e-12)


def test_vit_plugin_differs_once_decays_are_nonzero_and_trains_the_decays():
    plain = _vit()
    converted = to_ppma(copy.deepcopy(plain)).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert (converted.eval()(x) - plain(x)).abs().max() > 1e-6
    features = converted.train().forward_features(x)  # timm zero-initialises the head: test below it
    (features * torch.randn_like(features)).sum().backward()
    missing = [n for n, p in converted.named_parameters() if p.grad is None and not n.startswith("head.")]
    assert not missing
    assert all(converted.blocks[i].attn.decay.dt_linear.weight.grad.abs().sum() > 0 for i in range(3))
    # the original weights keep their keys; the decay generators are added
    extra = set(converted.state_dict()) - set(plain.state_dict())
    assert extra and all(".attn.decay." in k for k in extra) and set(plain.state_dict()) <= set(converted.state_dict())


@pytest.mark.parametrize("name", list(MASKS))
def test_every_zoo_mask_runs_in_a_vit(name):
    model = to_ppma(_vit(depth=1).float(), mask=name).train()
    out = model(torch.randn(2, 3, 64, 48 + 16))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.sum().backward()


@pytest.mark.parametrize("P,H,W", [(0, 3, 4), (1, 2, 5), (3, 4, 1)])
def test_masked_token_attention_is_the_padded_mask_softmax_average(P, H, W):
    B, heads, d = 2, 3, 8
    q, k, v = (torch.randn(B, heads, P + H * W, d, dtype=torch.float64) for _ in range(3))
    log_alpha, log_beta = random_decays(B, heads, H, W), random_decays(B, heads, H, W)
    grid_mask = naive_polyline_log_mask(log_alpha, log_beta)
    full = torch.zeros(B, heads, P + H * W, P + H * W, dtype=torch.float64)
    full[:, :, P:, P:] = grid_mask  # prefix rows and columns stay 0
    scores = q @ k.mT * d**-0.5
    want = 0.5 * (torch.softmax(scores + full, -1) + torch.softmax(scores + full.mT, -1)) @ v
    got = masked_token_attention(q, k, v, log_alpha, log_beta, num_prefix_tokens=P)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_deit_tiny_ppma_is_registered_with_deit_tiny_plus_the_decay_generators():
    import ppma.integrations  # noqa: F401  (registers deit_tiny_ppma)

    assert "deit_tiny_ppma" in timm.list_models("deit_tiny_*")
    model = timm.create_model("deit_tiny_ppma", img_size=32)
    deit = timm.create_model("deit_tiny_patch16_224", img_size=32)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in deit.parameters())
    assert extra == 12 * (2 * 64 + 3 + 3)  # per block: dt_linear (2, d = 64), dt_bias and A_log (heads = 3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_bad_input_gives_one_line_errors():
    model = _vit(depth=1)
    with pytest.raises(ValueError, match="num_prefix_tokens: the model has 1 prefix tokens"):
        to_ppma(copy.deepcopy(model), num_prefix_tokens=2)
    with pytest.raises(ValueError, match="valid masks are"):
        to_ppma(copy.deepcopy(model), mask="spiral")
    with pytest.raises(ValueError, match="expected a timm VisionTransformer"):
        to_ppma(torch.nn.Linear(2, 2))
    converted = to_ppma(model)
    with pytest.raises(ValueError, match="already converted"):
        to_ppma(converted)
    with pytest.raises(ValueError, match="grid: unknown"):
        to_ppma(_vit(depth=1)).blocks[0].attn(torch.randn(1, 17, 192, dtype=torch.float64))
    q = torch.randn(1, 2, 10, 4)
    a = random_decays(1, 2, 3, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"num_prefix_tokens: 0 prefix tokens \+ a 3x3 grid = 9 tokens, but q has 10"):
        masked_token_attention(q, q, q, a, a)
    with pytest.raises(ValueError, match="attention dropout"):
        to_ppma(_vit(depth=1, attn_drop_rate=0.1))
