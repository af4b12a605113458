"""Modules: decay generator, flat rotary rotation, attention layer backend flip."""

from __future__ import annotations

import pytest
import torch

from ppma.decay import PathDecay
from ppma.layers import FlatRotary, PolylineAttention, rotate


def test_path_decay_shapes_sign_and_float32_under_autocast():
    decay = PathDecay(dim=32, num_heads=4)
    x = torch.randn(2, 5, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_alpha, log_beta = decay(x)
    assert log_alpha.shape == log_beta.shape == (2, 4, 5, 7)
    assert log_alpha.dtype == log_beta.dtype == torch.float32
    assert (log_alpha <= 0).all() and (log_beta <= 0).all()
    assert not torch.equal(log_alpha, log_beta)  # two channels of one shared linear


def test_path_decay_matches_spec_formula_in_float64():
    decay = PathDecay(dim=12, num_heads=3).double()
    x = torch.randn(2, 3, 4, 12, dtype=torch.float64)
    log_alpha, log_beta = decay(x)
    W = decay.dt_linear.weight  # (2, d): one matrix shared by all heads
    for h in range(3):
        dt = x[..., h * 4 : (h + 1) * 4] @ W.T  # (B, H, W, 2)
        a = -torch.exp(decay.A_log[h])
        want = torch.nn.functional.softplus(dt + decay.dt_bias[h]) * a
        torch.testing.assert_close(log_alpha[:, h], want[..., 0])
        torch.testing.assert_close(log_beta[:, h], want[..., 1])


def test_flat_rotary_is_a_rotation_over_the_flattened_index():
    rotary = FlatRotary(8).double()
    sin, cos = rotary(3, 4)
    q, k = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    rq = rotate(q[:, None, None], sin, cos)  # (2, 3, 4, 8)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1)[:, None, None].expand(2, 3, 4))
    # Scores depend only on the flattened offset: (0, 1) vs (0, 2) equals (1, 0) vs (1, 1) (n = 1, 2 and 4, 5).
    rk = rotate(k[:, None, None], sin, cos)
    s1 = (rq[:, 0, 1] * rk[:, 0, 2]).sum(-1)
    s2 = (rq[:, 1, 0] * rk[:, 1, 1]).sum(-1)
    torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize("mode", ["full", "criss_cross"])
def test_attention_layer_gives_equal_outputs_on_every_cpu_backend(mode):
    layer = PolylineAttention(32, 4, mode=mode, backend="reference").double()
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    rotary = FlatRotary(8).double()(5, 6)
    want = layer(x, rotary)
    layer.backend = "dense"
    torch.testing.assert_close(layer(x, rotary), want, rtol=1e-10, atol=1e-12)


def test_attention_layer_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_heads"):
        PolylineAttention(30, 4)
    with pytest.raises(ValueError, match="mode"):
        PolylineAttention(32, 4, mode="diagonal")
