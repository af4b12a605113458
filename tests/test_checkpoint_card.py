"""Files that carry what they need: the model card in every file ppma writes, convert's refusals and atomic
writes, file modes, and the commands that read cards (eval, predict, viz) or image folders (the datasets)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from imagefolder import make_image_folder, one_thread  # noqa: F401  (one_thread: autouse fixture)
from PIL import Image

import ppma  # noqa: F401
from ppma.checkpoint import atomic_save, convert, model_card, read_card, read_checkpoint
from ppma.cli import main
from ppma.train import TrainConfig, digits_config, evaluate_checkpoint, predict_images
from ppma.train.data import DIGITS_CLASSES, build_datasets


def _randomised(model: torch.nn.Module, scale: float) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _training_checkpoint(path: Path, config: TrainConfig, classes: list[str]) -> dict:
    """A best.pth as ``ppma train`` writes it (card, config, model and different EMA weights), built directly."""
    model = timm.create_model(config.model, num_classes=len(classes))
    ckpt = {"format": 0, "task": "classify", **model_card(config, classes), "num_classes": len(classes),
            "config": config.to_dict(), "model": _randomised(model, 0.05), "model_ema": _randomised(model, 0.05)}
    atomic_save(ckpt, path)
    return ckpt


def test_converted_ema_file_evaluates_like_the_training_checkpoint(tmp_path, capsys):
    """The issue's 97.78 % vs 61.39 %: the converted file keeps the digits transform, classes and name."""
    config = digits_config(interpolation="bicubic", mean=(0.4, 0.45, 0.5), std=(0.3, 0.25, 0.2))
    _training_checkpoint(tmp_path / "best.pth", config, DIGITS_CLASSES)
    assert main(["convert", str(tmp_path / "best.pth"), str(tmp_path / "e.safetensors"), "--ema"]) == 0
    capsys.readouterr()

    card = read_card(read_checkpoint(tmp_path / "e.safetensors"))
    assert card["model_name"] == "ppma_nano" and card["classes"] == DIGITS_CLASSES
    assert card["transform"] == dict(input_size=32, crop_pct=1.0, interpolation="bicubic", mean=[0.4, 0.45, 0.5],
                                     std=[0.3, 0.25, 0.2])  # fmt: skip
    whole = evaluate_checkpoint(tmp_path / "best.pth", None, weights="ema", workers=0, batch_size=180)
    converted = evaluate_checkpoint(tmp_path / "e.safetensors", None, workers=0, batch_size=180)
    assert (converted["top1"], converted["loss"]) == (whole["top1"], whole["loss"])
    assert converted["input_size"] == 32 and converted["interpolation"] == "bicubic" and converted["assumed"] == ""
    assert converted["weights"] == whole["weights"] == "ema"

    # Without the card (a foreign file) the command says in its output line what it assumed.
    from safetensors.torch import load_file, save_file

    save_file(load_file(tmp_path / "e.safetensors"), tmp_path / "bare.safetensors")
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "bare.safetensors")]) == 2
    assert "does not name its model" in capsys.readouterr().err
    Image.fromarray(np.random.randint(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "bare.safetensors"),
                 "--model", "ppma_nano", "--device", "cpu"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "assumed ppma_nano's defaults: 32 px, crop 1.000, bicubic" in err and "class_0..class_9" in err


def test_convert_never_overwrites_its_source_or_a_file_without_force(tmp_path, capsys):
    config = digits_config()
    _training_checkpoint(tmp_path / "b.pth", config, DIGITS_CLASSES)
    before = (tmp_path / "b.pth").read_bytes()
    assert main(["convert", str(tmp_path / "b.pth"), str(tmp_path / "b.pth")]) == 2
    assert main(["convert", str(tmp_path / "b.pth"), str(tmp_path / "." / "b.pth"), "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert (tmp_path / "b.pth").read_bytes() == before

    (tmp_path / "w.pth").write_bytes(b"keep me")
    assert main(["convert", str(tmp_path / "b.pth"), str(tmp_path / "w.pth")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and (tmp_path / "w.pth").read_bytes() == b"keep me"
    assert main(["convert", str(tmp_path / "b.pth"), str(tmp_path / "w.pth"), "--force"]) == 0
    written = read_checkpoint(tmp_path / "w.pth")
    assert read_card(written) == read_card(read_checkpoint(tmp_path / "b.pth"))
    assert written["weights"] == "model" and "model_ema" not in written and "optimizer" not in written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pth", "w.pth"]  # no temporary file left


def test_written_checkpoints_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_save({"x": torch.ones(1)}, tmp_path / "a.pth")
        convert(tmp_path / "a.pth", tmp_path / "a.safetensors")
        os.umask(0o022)
        atomic_save({"x": torch.ones(1)}, tmp_path / "b.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pth").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.pth").stat().st_mode) == 0o644


def test_card_of_a_training_checkpoint_written_before_cards_comes_from_its_config(tmp_path):
    config = digits_config(crop_pct=0.9)
    old = {"model_name": "ppma_nano", "classes": DIGITS_CLASSES, "config": config.to_dict(), "model": {}}
    card = read_card(old)
    assert card["transform"] == dict(input_size=32, crop_pct=0.9, interpolation="bilinear", mean=[0.5] * 3,
                                     std=[0.5] * 3)  # fmt: skip
    assert card["transform"] == model_card(config, DIGITS_CLASSES)["transform"]
    assert card["classes"] == DIGITS_CLASSES and card["model_name"] == "ppma_nano"
    assert read_card({"model": {}}) == {"model_name": None, "model_kwargs": {}, "classes": None, "transform": None}


def test_hidden_folders_do_not_shift_the_labels_of_the_training_set(tmp_path):
    root = make_image_folder(tmp_path, classes=3, train=2, val=1, size=(12, 10))
    for hidden in (root / "train" / ".thumbs", root / "train" / ".ipynb_checkpoints"):
        hidden.mkdir()
        Image.new("RGB", (8, 8)).save(hidden / "x.png")
    Image.new("RGB", (9, 9), (1, 2, 3)).save(root / "train" / "class2" / "extra.gif")  # GIF: an image
    (root / "train" / "class1" / "notes.txt").write_text("x")
    train, val, classes = build_datasets(TrainConfig(data_path=str(root), input_size=16))
    assert classes == ["class0", "class1", "class2"] == train.source.classes
    labels = {Path(p).relative_to(root / "train").as_posix(): y for p, y in train.source.samples}
    want = {f"class{c}/{i}.png": c for c in range(3) for i in range(2)} | {"class2/extra.gif": 2}
    assert labels == want
    for i in range(len(train)):  # the items too: what the loader sees
        _, label, path = train[i]
        assert label == int(Path(path).parent.name.removeprefix("class"))
    from ppma.train.data import describe_folders

    assert describe_folders(train, val) == "; train: skipped 1 non-image files: 1 .txt"  # hidden class folders: ignored


def test_predict_reports_an_unreadable_image_and_predicts_the_others(tmp_path, capsys):
    config = digits_config()
    _training_checkpoint(tmp_path / "c.pth", config, DIGITS_CLASSES)
    paths = [tmp_path / "a.png", tmp_path / "bad.jpg", tmp_path / "c.png"]
    for p in (paths[0], paths[2]):
        Image.fromarray(np.random.randint(0, 255, (30, 26, 3), dtype=np.uint8)).save(p)
    paths[1].write_bytes(b"\xff\xd8 not really a jpeg")
    records = predict_images(tmp_path / "c.pth", paths, device="cpu", topk=2)
    assert [r["file"] for r in records] == [str(p) for p in paths] and records.assumed == ""
    assert "top" in records[0] and "top" in records[2] and "not a readable image" in records[1]["error"]
    alone = predict_images(tmp_path / "c.pth", [paths[2]], device="cpu", topk=2)
    assert alone[0] == records[2]  # the bad image changed nothing for the others
    assert {name for name, _ in records[0]["top"]} <= set(DIGITS_CLASSES)

    argv = ["predict", *map(str, paths), "--checkpoint", str(tmp_path / "c.pth"), "--device", "cpu",
            "--json", str(tmp_path / "out" / "p.json")]  # fmt: skip
    assert main(argv) == 1  # some images skipped
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [str(paths[0]), str(paths[2])]
    assert err.strip().startswith(f"ppma predict: skipped {paths[1]}") and len(err.strip().splitlines()) == 1
    saved = json.loads((tmp_path / "out" / "p.json").read_text())
    assert [("error" in r) for r in saved] == [False, True, False]


def test_viz_uses_the_model_our_checkpoint_names_and_writes_the_path_it_prints(tmp_path, capsys):
    from ppma.viz.capture import load_model

    config = digits_config(mean=(0.3, 0.4, 0.5), std=(0.2, 0.2, 0.3))
    ckpt = _training_checkpoint(tmp_path / "n.pth", config, DIGITS_CLASSES)
    model = load_model(None, tmp_path / "n.pth")
    assert model.pretrained_cfg["architecture"] == "ppma_nano" and model.pretrained_cfg["mean"] == (0.3, 0.4, 0.5)
    key = "stages.3.blocks.1.attn.q_proj.weight"
    torch.testing.assert_close(model.state_dict()[key], ckpt["model"][key], rtol=0, atol=0)
    Image.fromarray(np.random.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    argv = ["viz", "attention", str(tmp_path / "img.png"), "--checkpoint", str(tmp_path / "n.pth"), "--size", "64",
            "--stage", "3", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out.png") and Path(printed).stat().st_size > 0
    assert not (tmp_path / "out").exists()

    # a published file (no card): a note says what was assumed; without --model it does not fit ppma_tiny
    from conftest import PUBLISHED_MICRO  # in the repository: this runs on every clone

    argv = ["viz", "decay", str(tmp_path / "img.png"), "--checkpoint", str(PUBLISHED_MICRO), "--size", "64",
            "-o", str(tmp_path / "d.png")]  # fmt: skip
    assert main([*argv, "--model", "ppma_micro_fixture"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "d.png")
    note = f"ppma viz: note: {PUBLISHED_MICRO.name} stores no normalisation: assumed ImageNet's mean and std"
    assert err.strip() == note
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "names no model: assumed ppma_tiny" in err and "does not fit" in err and "pass --model" in err
    assert len(err.splitlines()) == 2  # the note, then the one-line error


def test_dense_sets_ignore_hidden_files_and_scale_16_bit_images(tmp_path):
    from ppma.dense.data import load_rgb, segmentation_pairs

    for split in ("images", "annotations"):
        (tmp_path / split / "training").mkdir(parents=True)
    deep = np.random.randint(0, 65536, (6, 7), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "images" / "training" / "a.png")  # 16-bit grayscale
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / "annotations" / "training" / "a.png")
    (tmp_path / "images" / "training" / "._a.png").write_bytes(b"macOS resource fork")  # hidden: not an image
    (tmp_path / "annotations" / "training" / ".b.png").write_bytes(b"x")
    pairs = segmentation_pairs(tmp_path, "train", "ade20k")
    assert [(i.name, a.name) for i, a in pairs] == [("a.png", "a.png")]
    rgb = np.asarray(load_rgb(pairs[0][0]))
    want = np.rint(deep.astype(np.float64) * 255 / 65535)
    assert rgb.shape == (6, 7, 3) and np.array_equal(rgb[..., 0], want) and np.array_equal(rgb[..., 2], want)


def test_timm_pretrained_from_our_file_takes_its_transform_and_says_when_the_head_is_dropped(tmp_path):
    """timm.create_model(..., pretrained_cfg_overlay=dict(file=ours)): resolve_data_config gave the registry's
    ImageNet transform and a forgotten num_classes left a random classifier, both without a word."""
    import warnings

    import pytest
    from timm.data import resolve_data_config

    config = digits_config(input_size=40, crop_pct=0.9, interpolation="bicubic", mean=(0.4, 0.45, 0.5),
                           std=(0.3, 0.25, 0.2))  # fmt: skip
    classes = [f"c{i}" for i in torch.randperm(7).tolist()]
    ckpt = _training_checkpoint(tmp_path / "best.pth", config, classes)
    local = dict(file=str(tmp_path / "best.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right class count: no warning
        model = timm.create_model("ppma_nano", pretrained=True, pretrained_cfg_overlay=local, num_classes=7)
    assert resolve_data_config(model=model) == dict(input_size=(3, 40, 40), interpolation="bicubic",
                                                    mean=(0.4, 0.45, 0.5), std=(0.3, 0.25, 0.2), crop_pct=0.9,
                                                    crop_mode="center")  # fmt: skip
    assert model.pretrained_cfg["label_names"] == classes
    assert torch.equal(model.state_dict()["head.fc.weight"], ckpt["model"]["head.fc.weight"])

    with pytest.warns(UserWarning, match="7-class classifier, the model 10 classes.*num_classes=7"):
        model = timm.create_model("ppma_nano", pretrained=True, pretrained_cfg_overlay=local)  # nano's 10
    assert model.num_classes == 10 and "label_names" not in model.pretrained_cfg
    key = "stages.2.blocks.0.attn.q_proj.weight"
    assert torch.equal(model.state_dict()[key], ckpt["model"][key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a backbone has no use for the classifier: nothing to warn about
        backbone = timm.create_model("ppma_nano", pretrained=True, pretrained_cfg_overlay=local, features_only=True)
    assert resolve_data_config(model=backbone)["input_size"] == (3, 40, 40)


def test_predict_takes_folders_as_their_images(tmp_path, capsys):
    """A folder used to be 'not a readable image (Is a directory)'; now it stands for its images, sorted."""
    _training_checkpoint(tmp_path / "c.pth", digits_config(), DIGITS_CLASSES)
    photos = tmp_path / "photos"
    paths = [photos / "b.png", photos / "a" / "z.jpg", photos / "a.png", photos / ".thumbs" / "t.png"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.randint(0, 255, (30, 26, 3), dtype=np.uint8)).save(p)
    (photos / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    want = predict_images(tmp_path / "c.pth", [paths[2], paths[0], paths[1]], device="cpu", topk=3)
    got = predict_images(tmp_path / "c.pth", [photos, tmp_path / "empty"], device="cpu", topk=3)
    assert got[:3] == want  # a.png, b.png, a/z.jpg: a folder's files, then its sub-folders; no hidden folder
    assert got[3]["file"] == str(tmp_path / "empty") and "a folder without images" in got[3]["error"]
    assert got.notes == [f"{photos}: skipped 2 non-image files: 1 hidden, 1 .txt"]

    assert main(["predict", str(photos), "--checkpoint", str(tmp_path / "c.pth"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [r["file"] for r in want]
    assert err.strip() == f"ppma predict: note: {got.notes[0]}"
    assert main(["predict", str(tmp_path / "empty"), "--checkpoint", str(tmp_path / "c.pth"), "--device", "cpu"]) == 2
    assert "a folder without images" in capsys.readouterr().err


def test_eval_names_the_non_image_files_it_left_out(tmp_path, capsys):
    """eval counted only readable images and said nothing of the other files in the class folders."""
    from imagefolder import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=3, train=1, val=3)
    classes = ["class0", "class1", "class2"]
    _training_checkpoint(tmp_path / "c.pth", digits_config(), classes)
    (root / "val" / "class1" / "notes.txt").write_text("not an image")
    (root / "val" / "class2" / "x.csv").write_text("1,2")
    (root / "val" / "class2" / "y.csv").write_text("3,4")
    m = evaluate_checkpoint(tmp_path / "c.pth", str(root), workers=0, batch_size=4, device="cpu")
    assert m["images"] == 9 and m["not_images"] == "val: skipped 3 non-image files: 2 .csv, 1 .txt"
    assert main(["eval", "--checkpoint", str(tmp_path / "c.pth"), "--data-path", str(root), "--workers", "0",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "on 9 images" in (out := capsys.readouterr().out) and "(val: skipped 3 non-image files" in out


def test_a_converted_ema_file_loads_with_checkpoint_ema(tmp_path):
    """``checkpoint_ema=True`` refused a file converted with --ema ("no 'model_ema'"), whose ``model`` holds the
    EMA weights (its card says ``weights: ema``); it now loads them, and refuses a file without EMA weights."""
    ckpt = _training_checkpoint(tmp_path / "best.pth", digits_config(), DIGITS_CLASSES)
    convert(tmp_path / "best.pth", tmp_path / "e.safetensors", use_ema=True)
    convert(tmp_path / "best.pth", tmp_path / "m.safetensors")
    model = timm.create_model("ppma_nano", pretrained=True, checkpoint_ema=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "e.safetensors")))  # fmt: skip
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model_ema"][name]), name
    with pytest.raises(ValueError, match="EMA weights requested but there is no 'model_ema'"):
        timm.create_model("ppma_nano", pretrained=True, checkpoint_ema=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "m.safetensors")))  # fmt: skip
