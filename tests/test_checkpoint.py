"""Checkpoints: published key names, round trips, strict errors, safe loading, conversion, atomic writes."""

from __future__ import annotations

import argparse
import re

import pytest
import timm
import torch

import ppma  # noqa: F401
from ppma.checkpoint import atomic_save, load_into, read_checkpoint
from ppma.cli import main as cli_main
from ppma.models import checkpoint_filter_fn, published_state_dict


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _randomised(model):
    """Weights moved off their initial values, so a load that silently kept init would be caught."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", ["ppma_nano", "ppma_base"])
def test_round_trip_through_published_key_names(name, tmp_path):
    src = _randomised(timm.create_model(name, num_classes=3))
    published = published_state_dict(src.state_dict())
    assert not any(k.startswith(("stages.", "stem.")) for k in published)
    assert any(".retention.path_embed.dt_linear.weight" in k for k in published)
    if name == "ppma_base":
        assert published["layers.2.blocks.0.gamma_1"].shape == (1, 1, 1, 320)
    assert "layers.0.downsample.reduction.weight" in published  # published downsample sits at the end of stage i
    torch.save({"model": published, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "ckpt.pth")
    file = dict(file=str(tmp_path / "ckpt.pth"))
    dst = timm.create_model(name, num_classes=3, pretrained=True, pretrained_cfg_overlay=file)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(dst, x), _logits(src, x), rtol=0, atol=0)


def test_filter_maps_every_published_key_of_the_fixture(published):
    ours = checkpoint_filter_fn(published["model"])
    model_keys = set(timm.create_model(published.model).state_dict())
    assert set(ours) == model_keys
    assert len(published["model"]) == len(model_keys) + 4  # the four Relpos.angle buffers are dropped


def test_ema_weights_are_chosen_on_request(published, tmp_path):
    plain = timm.create_model(published.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(published.path)))
    ema = timm.create_model(
        published.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(published.path)), checkpoint_ema=True
    )
    key = "stages.3.blocks.0.attn.q_proj.weight"
    torch.testing.assert_close(plain.state_dict()[key], checkpoint_filter_fn(published["model"])[key])
    torch.testing.assert_close(ema.state_dict()[key], checkpoint_filter_fn(published["model_ema"])[key])
    torch.save({"model": published["model"]}, tmp_path / "no_ema.pth")
    with pytest.raises(ValueError, match="model_ema"):
        load_into(plain, tmp_path / "no_ema.pth", use_ema=True)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = timm.create_model("ppma_nano").state_dict()
    del state["stages.1.blocks.0.attn.decay.A_log"]
    state["stages.1.blocks.0.attn.extra"] = torch.ones(1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        load_into(timm.create_model("ppma_nano"), tmp_path / "bad.pth")
    assert "missing (1): stages.1.blocks.0.attn.decay.A_log" in str(info.value)
    assert "unexpected (1): stages.1.blocks.0.attn.extra" in str(info.value)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    torch.save({"model": timm.create_model("ppma_nano").state_dict()}, tmp_path / "nano.pth")
    with pytest.raises(ValueError, match="wrong shape"):
        load_into(timm.create_model("ppma_tiny"), tmp_path / "nano.pth")


def test_other_class_count_keeps_the_new_classifier(tmp_path):
    src = _randomised(timm.create_model("ppma_nano", num_classes=10))
    torch.save({"model": src.state_dict()}, tmp_path / "ten.pth")
    dst = timm.create_model("ppma_nano", num_classes=3)
    fc_before = dst.head.fc.weight.clone()
    load_into(dst, tmp_path / "ten.pth")
    torch.testing.assert_close(dst.head.fc.weight, fc_before)
    torch.testing.assert_close(dst.head.proj.weight, src.head.proj.weight)


def test_pretrained_rgb_weights_adapt_to_other_channel_counts(tmp_path):
    """timm's in_chans with pretrained=True: a grey model from RGB weights (stem summed over colours) sees a grey
    image as the RGB model sees it repeated; 4 channels repeat and rescale. It was a wrong-shape error."""
    src = _randomised(timm.create_model("ppma_nano")).double()
    torch.save({"model": src.state_dict()}, tmp_path / "rgb.pth")
    file = dict(file=str(tmp_path / "rgb.pth"))
    grey = timm.create_model("ppma_nano", in_chans=1, pretrained=True, pretrained_cfg_overlay=file).double()
    x = torch.randn(2, 1, 45, 38, dtype=torch.float64)
    want = _logits(src, x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(_logits(grey, x), want, rtol=0, atol=1e-6)  # timm adapts in float32 (~1e-8 here)
    four = timm.create_model("ppma_nano", in_chans=4, pretrained=True, pretrained_cfg_overlay=file).double()
    w = src.stem[0].weight
    torch.testing.assert_close(four.stem[0].weight, torch.cat([w, w[:, :1]], 1) * 3 / 4, rtol=0, atol=1e-7)
    torch.testing.assert_close(four.stem[1].running_var, src.stem[1].running_var)  # the rest loaded as saved
    with pytest.raises(ValueError, match="wrong shape"):  # a plain load (resume, eval) still wants the file's stem
        load_into(timm.create_model("ppma_nano", in_chans=1), tmp_path / "rgb.pth")


def test_dense_checkpoint_loads_into_features_backbone(published, tmp_path):
    torch.save(published["backbone"], tmp_path / "dense.pth")
    file = dict(file=str(tmp_path / "dense.pth"))
    model = timm.create_model(published.model, features_only=True, pretrained=True, pretrained_cfg_overlay=file)
    model.double()
    with torch.no_grad():
        feats = model.eval()(published["inputs"][0])
    for got, want in zip(feats, published["features_float64"], strict=True):
        assert (got - want).abs().max() <= 1e-10 * want.abs().max()
    # The same weights as `state_dict` with `backbone.*` keys (the dense frameworks' layout) load identically.
    wrapped = {"state_dict": {f"backbone.{k}": v for k, v in published["backbone"]["model"].items()}}
    wrapped["state_dict"]["decode_head.conv_seg.weight"] = torch.randn(3, 3)
    torch.save(wrapped, tmp_path / "mmseg.pth")
    file = dict(file=str(tmp_path / "mmseg.pth"))
    again = timm.create_model(published.model, features_only=True, pretrained=True, pretrained_cfg_overlay=file)
    again.double()
    with torch.no_grad():
        for a, b in zip(again.eval()(published["inputs"][0]), feats, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickles_are_refused(tmp_path):
    torch.save({"model": {}, "payload": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="cannot read"):
        read_checkpoint(tmp_path / "evil.pth")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _cut(path, save, keep: int):
    save(path)
    return _write(path, path.read_bytes()[:keep])


@pytest.mark.parametrize("make, says", [
    (lambda p: _write(p, b"<html>\n"), r"x\.pth: not a PyTorch checkpoint \(neither a zip archive nor torch's legacy "
                                       r"format; it starts with b'<html>\\n'\)$"),
    (lambda p: _write(p, b'{"model": 1}'), r"x\.pth: not a PyTorch checkpoint"),
    (lambda p: _cut(p, lambda q: torch.save({"w": torch.zeros(9)}, q), 100),
     r"x\.pth: truncated or damaged \(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
     r"central directory\)$"),
    (lambda p: _cut(p, lambda q: torch.save({"w": torch.zeros(9)}, q, _use_new_zipfile_serialization=False), 40),
     r"x\.pth: truncated or damaged \(EOFError\)$"),
    (lambda p: torch.save({"model": {}, "payload": _Evil()}, p),
     r"x\.pth safely: it holds print, which is not a tensor"),
], ids=["html", "json", "cut-zip", "cut-legacy", "unsafe"])  # fmt: skip
def test_unreadable_file_says_what_it_is_not_and_never_to_load_unsafely(tmp_path, make, says):
    """torch's message told to retry with weights_only=False: code from a downloaded file would run."""
    make(tmp_path / "x.pth")
    with pytest.raises(ValueError) as info:
        read_checkpoint(tmp_path / "x.pth")
    message = str(info.value)
    assert message.startswith(f"checkpoint: cannot read {tmp_path / 'x.pth'}") and re.search(says, message), message
    assert "\n" not in message and "weights_only" not in message and "trust" not in message and "\x1b" not in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_checkpoint(tmp_path / "nothing.pth")


def test_convert_to_safetensors_gives_the_same_model(published, tmp_path, capsys):
    out = tmp_path / "nano.safetensors"
    assert cli_main(["convert", str(published.path), str(out)]) == 0
    tensors = {"ppma_nano": 216}.get(published.model, len(timm.create_model(published.model).state_dict()))
    assert f"wrote {tensors} tensors" in capsys.readouterr().out
    model = timm.create_model(published.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    x = published["inputs"][1].float()
    torch.testing.assert_close(_logits(model, x), published["logits_float32"][1], rtol=0, atol=1e-4)


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temporary file left behind


def test_model_and_checkpoint_code_import_the_key_mapping_at_module_level():
    """No import cycle to dodge: no function-level import in the model, checkpoint or key-mapping modules."""
    import ast
    from pathlib import Path

    import ppma.checkpoint
    import ppma.models.ppma
    import ppma.models.published

    for module in (ppma.checkpoint, ppma.models.ppma, ppma.models.published):
        tree = ast.parse(Path(module.__file__).read_text())
        inner = [ast.unparse(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                 for n in ast.walk(f)
                 if isinstance(n, ast.ImportFrom) and (n.level or "ppma" in (n.module or ""))]  # fmt: skip
        assert inner == [], (module.__name__, inner)
    assert ppma.models.ppma.checkpoint_filter_fn is ppma.models.published.checkpoint_filter_fn
    assert ppma.checkpoint.checkpoint_filter_fn is ppma.models.published.checkpoint_filter_fn
