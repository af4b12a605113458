"""Published weights by name through timm's hub loading, offline: a local Hugging Face cache in tmp."""

from __future__ import annotations

import argparse
import re

import pytest
import timm
import torch

import ppma  # noqa: F401
from ppma.models.ppma import PUBLISHED_HUB_ID, checkpoint_filter_fn, published_state_dict

TINY_FILE = "checkpoints/classification/PPMA_T_202502251000/best.pth"


SHORT = dict(depths=(1, 1, 1, 1))  # ppma_tiny's layer shapes, one block per stage: fast


def _published_file(path, **kwargs) -> dict:
    """A released-format training checkpoint (published key names, Relpos angles, args) with fresh weights."""
    model = timm.create_model("ppma_tiny", **kwargs)
    plain = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in plain.items()}
    ckpt = {"model": published_state_dict(plain), "model_ema": published_state_dict(ema), "epoch": 299,
            "max_accuracy": 82.6, "args": argparse.Namespace(model="PPMA_T", input_size=224)}  # fmt: skip
    for name in ("model", "model_ema"):
        for i, stage in enumerate(model.stages):
            ckpt[name][f"layers.{i}.Relpos.angle"] = stage.rotary.angle.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ckpt


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache (HF_HOME, HF_HUB_CACHE), offline."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time: the test process imported it already
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _put_in_cache(cache, filename: str, make) -> object:
    """The huggingface_hub layout: models--org--name/{refs/main, snapshots/<commit>/<path>}."""
    repo = cache / ("models--" + PUBLISHED_HUB_ID.replace("/", "--"))
    commit = "%040x" % torch.randint(0, 2**62, (1,)).item()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return make(repo / "snapshots" / commit / filename)


def test_published_name_loads_the_cached_file_exactly_with_ema(hf_cache):
    ckpt = _put_in_cache(hf_cache, TINY_FILE, _published_file)
    model = timm.create_model("ppma_tiny.in1k", pretrained=True)
    want = checkpoint_filter_fn(ckpt["model_ema"])  # the published evaluation's weights: the EMA
    got = model.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == "ZhongchenZhao/PPMA" and cfg["hf_hub_filename"] == TINY_FILE
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["license"] == "apache-2.0" and "top1=82.6" in cfg["notes"]
    # the bare name picks the default tag; checkpoint_ema=False takes the plain weights
    plain = timm.create_model("ppma_tiny", pretrained=True, checkpoint_ema=False)
    key = "stages.2.blocks.3.attn.q_proj.weight"
    assert torch.equal(plain.state_dict()[key], checkpoint_filter_fn(ckpt["model"])[key])
    assert not torch.equal(plain.state_dict()[key], got[key])


def test_pretrained_file_resolves_names_in_the_cache(hf_cache):
    from ppma.hub import hub_source, pretrained_file, published_names

    assert published_names() == ["ppma_base.in1k", "ppma_small.in1k", "ppma_tiny.in1k"]
    assert hub_source("ppma_small")[2] == "checkpoints/classification/PPMA_S_202504021000/best.pth"
    path = _put_in_cache(hf_cache, TINY_FILE, lambda p: (p.parent.mkdir(parents=True), p.write_bytes(b"x"))[0])
    assert pretrained_file("ppma_tiny.in1k").read_bytes() == b"x"
    with pytest.raises(ValueError, match="no published weights.*ppma_tiny.in1k"):
        hub_source("ppma_nano")
    del path


@pytest.mark.parametrize("how", ["timm", "pretrained_file"])
def test_missing_file_offline_is_one_line_naming_source_and_local_option(hf_cache, how):
    from ppma.hub import pretrained_file

    with pytest.raises(FileNotFoundError) as info:
        if how == "timm":
            timm.create_model("ppma_small.in1k", pretrained=True, **SHORT)
        else:
            pretrained_file("ppma_small.in1k")
    message = str(info.value)
    assert "\n" not in message
    assert "ZhongchenZhao/PPMA" in message and "PPMA_S_202504021000/best.pth" in message
    assert "pretrained_cfg_overlay=dict(file=" in message and "--checkpoint" in message


def test_local_file_still_goes_through_the_published_key_map(tmp_path):
    ckpt = _published_file(tmp_path / "best.pth", **SHORT)
    local = dict(file=str(tmp_path / "best.pth"))
    model = timm.create_model("ppma_tiny.in1k", pretrained=True, pretrained_cfg_overlay=local, **SHORT)
    key = "stages.1.downsample.reduction.weight"  # published: layers.0.downsample
    assert torch.equal(model.state_dict()[key], checkpoint_filter_fn(ckpt["model"])[key])  # a file: plain weights


def test_commands_take_published_names(hf_cache, tmp_path, capsys):
    """predict with --model ppma_tiny.in1k --pretrained (EMA, the in1k transform); the dense backbone by name."""
    import numpy as np
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    from ppma.cli import main
    from ppma.dense.backbone import create_backbone

    ckpt = _put_in_cache(hf_cache, TINY_FILE, _published_file)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.randint(0, 255, (180, 250, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--model", "ppma_tiny.in1k", "--pretrained", "--topk", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out

    model = timm.create_model("ppma_tiny", num_classes=1000).eval()
    model.load_state_dict(checkpoint_filter_fn(ckpt["model_ema"]))
    transform = create_transform(**resolve_data_config(model=model))  # 224, resize 256, bicubic, ImageNet stats
    with torch.no_grad():
        top = model(transform(Image.open(image).convert("RGB"))[None]).argmax(-1).item()
    assert f": {ImageNetInfo().index_to_description(top)} " in printed

    backbone = create_backbone("ppma_tiny", "ppma_tiny.in1k")
    key = "stages.2.blocks.0.attn.v_proj.weight"
    state = {k.removeprefix("model."): v for k, v in backbone.state_dict().items()}  # FeatureGetterNet wraps it
    assert torch.equal(state[key], checkpoint_filter_fn(ckpt["model"])[key])
    with pytest.raises(ValueError, match="holds ppma_tiny weights, but the backbone is ppma_small"):
        create_backbone("ppma_small", "ppma_tiny.in1k")

    assert main(["predict", str(image), "--pretrained"]) == 2
    assert "--pretrained needs --model" in capsys.readouterr().err


def test_damaged_cached_file_says_how_to_fetch_it_again(hf_cache):
    """An interrupted download stays in the cache: the error said the file was unreadable, not what to do."""
    def damaged(path):
        path.parent.mkdir(parents=True)
        data = bytearray(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist())
        path.write_bytes(b"PK\x03\x04" + bytes(data))  # the start of a zip, cut off

    _put_in_cache(hf_cache, TINY_FILE, damaged)
    with pytest.raises(ValueError, match=r"cannot read .*best\.pth.*fetch it again: huggingface_hub\.hf_hub_download"
                                         r"\('ZhongchenZhao/PPMA', '.*PPMA_T_202502251000/best\.pth', "
                                         r"force_download=True\)"):  # fmt: skip
        timm.create_model("ppma_tiny.in1k", pretrained=True, **SHORT)
    local = dict(file=str(next(hf_cache.rglob("best.pth"))))
    with pytest.raises(ValueError) as info:  # a local file: no word about the cache
        timm.create_model("ppma_tiny", pretrained=True, pretrained_cfg_overlay=local, **SHORT)
    assert "fetch it again" not in str(info.value)


def _damaged(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 16)  # the start of a zip, cut off


@pytest.mark.parametrize("command", ["predict", "eval", "export", "viz", "backbone"])
def test_commands_say_how_to_fetch_a_damaged_cached_file_again(hf_cache, tmp_path, capsys, command):
    """--model ppma_tiny.in1k --pretrained read the cached file without the hint timm loading gives."""
    import numpy as np
    from PIL import Image

    from ppma.cli import main
    from ppma.dense.backbone import create_backbone

    _put_in_cache(hf_cache, TINY_FILE, _damaged)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    hint = (r"cannot read .*best\.pth.*; a damaged download in the Hugging Face cache\? fetch it again: "
            r"huggingface_hub\.hf_hub_download\('ZhongchenZhao/PPMA', '.*PPMA_T_202502251000/best\.pth', "
            r"force_download=True\)")  # fmt: skip
    if command == "backbone":  # ppma detect|segment train --pretrained ppma_tiny.in1k
        with pytest.raises(ValueError, match=hint):
            create_backbone("ppma_tiny", "ppma_tiny.in1k")
        return
    args = {"predict": ["predict", str(image)], "eval": ["eval", "--workers", "0"],
            "export": ["export", str(tmp_path / "out")], "viz": ["viz", "attention", str(image)]}[command]  # fmt: skip
    assert main([*args, "--model", "ppma_tiny.in1k", "--pretrained"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(hint, err), err
