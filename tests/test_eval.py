"""ppma eval: published .pth files and ours, the published evaluation transform, exact metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from imagefolder import one_thread  # noqa: F401  (one_thread: autouse fixture)
from torchvision import transforms

import ppma  # noqa: F401
from ppma.checkpoint import load_into
from ppma.cli import main
from ppma.train import TrainConfig, evaluate_checkpoint
from ppma.train.data import DigitsDataset, build_transform


def test_eval_transform_is_resize_256_then_centre_crop_224():
    steps = build_transform(TrainConfig(), is_training=False).transforms
    resize, crop = steps[0], steps[1]
    assert isinstance(resize, transforms.Resize) and resize.size == 256  # shorter side to 224 / 0.875
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert isinstance(crop, transforms.CenterCrop) and tuple(crop.size) == (224, 224)


def test_published_checkpoint_evaluates_like_a_hand_written_loop(published, capsys):
    """Each published fixture (10 classes, published key names, EMA) on the digits val split, at 32 px."""
    metrics = evaluate_checkpoint(published.path, None, model_name=published.model, workers=0, batch_size=100)
    assert metrics["weights"] == "ema" and metrics["images"] == 360 and metrics["input_size"] == 32

    model = timm.create_model(published.model, num_classes=10).eval()
    load_into(model, published.path, use_ema=True)
    tf = build_transform(TrainConfig(input_size=32, crop_pct=1.0, interpolation="bicubic"), is_training=False)
    data = DigitsDataset("val", size=32)
    with torch.no_grad():
        logits = model(torch.stack([tf(data[i][0]) for i in range(len(data))])).double()
    targets = torch.tensor(data.targets)
    top5 = logits.topk(5, dim=1).indices
    assert metrics["top1"] == pytest.approx(100 * (logits.argmax(1) == targets).double().mean().item())
    assert metrics["top5"] == pytest.approx(100 * (top5 == targets[:, None]).any(1).double().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)

    assert main(["eval", "--checkpoint", str(published.path), "--model", published.model, "--weights", "model",
                 "--workers", "0"]) == 0  # fmt: skip
    assert f"{published.model} (model weights, 32px" in capsys.readouterr().out


def test_published_checkpoint_without_a_model_name_is_a_one_line_error(published, capsys):
    assert main(["eval", "--checkpoint", str(published.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --model" in err and "\n" not in err


def test_predict_gives_the_top_classes_of_a_hand_written_forward(published, tmp_path, capsys):
    """ppma predict on image files: the checkpoint's transform and EMA weights, probabilities sorted, JSON out."""
    import json

    import numpy as np
    from PIL import Image
    from ppma.train import predict_images

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.randint(0, 255, (40 + 7 * i, 36, 3), dtype=np.uint8)).save(paths[-1])
    got = predict_images(published.path, paths, model_name=published.model, topk=3, device="cpu")

    model = timm.create_model(published.model, num_classes=10).eval()
    load_into(model, published.path, use_ema=True)
    tf = build_transform(TrainConfig(input_size=32, crop_pct=1.0, interpolation="bicubic"), is_training=False)
    for record, path in zip(got, paths, strict=True):
        with torch.no_grad():
            probs = model(tf(Image.open(path).convert("RGB"))[None]).softmax(-1)[0]
        values, indices = probs.topk(3)
        assert record["file"] == str(path)
        assert [name for name, _ in record["top"]] == [f"class_{i}" for i in indices.tolist()]
        assert [p for _, p in record["top"]] == pytest.approx(values.tolist(), rel=1e-5)

    assert main(["predict", str(paths[0]), "--checkpoint", str(published.path), "--model", published.model,
                 "--json", str(tmp_path / "p.json")]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"{paths[0]}: class_")
    assert len(json.loads((tmp_path / "p.json").read_text())[0]["top"]) == 5
    (tmp_path / "bad.png").write_bytes(b"not a png")
    bad = ["predict", str(tmp_path / "bad.png"), "--checkpoint", str(published.path), "--model", published.model]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.png" in err and "\n" not in err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_read_the_checkpoint_once(command, checkpoint_reads, tmp_path, capsys):
    """The model card (name, classes, transform) and the weights come from one read of the file."""
    import numpy as np
    from conftest import PUBLISHED_MICRO
    from PIL import Image

    argv = [command, "--checkpoint", str(PUBLISHED_MICRO), "--model", "ppma_micro_fixture"]
    if command == "predict":
        Image.fromarray(np.random.randint(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "0.png")
        argv.insert(1, str(tmp_path / "0.png"))
    else:
        argv += ["--workers", "0"]
    assert main(argv) == 0 and capsys.readouterr().out
    assert checkpoint_reads.count(PUBLISHED_MICRO) == 1, checkpoint_reads


def test_predict_json_is_written_atomically(tmp_path, capsys, atomic_renames):
    """--json went through Path.write_text: a reader or a crash could see half a file. Now a temporary file
    beside it, renamed over the old one (ppma.checkpoint.atomic_write_text)."""
    import json

    import numpy as np
    from conftest import PUBLISHED_MICRO
    from PIL import Image

    Image.fromarray(np.random.randint(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "0.png")
    out = tmp_path / "p.json"
    out.write_text("old predictions")
    assert main(["predict", str(tmp_path / "0.png"), "--checkpoint", str(PUBLISHED_MICRO), "--model",
                 "ppma_micro_fixture", "--json", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    ((src, dst, held),) = atomic_renames
    assert dst == str(out) and Path(src).parent == tmp_path and held == out.read_bytes()
    assert json.loads(out.read_text())[0]["file"] == str(tmp_path / "0.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "p.json"]  # no temporary file left


def test_predict_names_imagenet_classes_for_a_1000_class_published_file(tmp_path):
    from PIL import Image
    from timm.data import ImageNetInfo

    from ppma.checkpoint import atomic_save
    from ppma.models.ppma import published_state_dict
    from ppma.train import predict_images

    model = timm.create_model("ppma_nano", num_classes=1000)
    atomic_save({"model": published_state_dict(model.state_dict())}, tmp_path / "in1k.pth")
    Image.new("RGB", (48, 40), (200, 30, 60)).save(tmp_path / "red.png")
    (record,) = predict_images(tmp_path / "in1k.pth", [tmp_path / "red.png"], model_name="ppma_nano", device="cpu")
    info = ImageNetInfo()  # reads timm's class files: once, not per class
    imagenet = {info.index_to_description(i) for i in range(1000)}
    assert len(record["top"]) == 5 and all(name in imagenet for name, _ in record["top"])


def test_eval_without_data_path_reads_the_folder_the_run_trained_on(tmp_path, capsys):
    """A checkpoint trained on an image folder was evaluated on the digits when --data-path was left out
    (a class-count error, or a meaningless top-1 for a 10-class folder); now on that folder's val split."""
    from imagefolder import make_image_folder

    from ppma.checkpoint import model_card

    seed = int(torch.randint(1 << 30, ()))  # fresh images per run (PPMA_TEST_SEED replays them)
    root = make_image_folder(tmp_path / "data", classes=3, train=1, val=3, size=(20, 28), seed=seed)
    config = TrainConfig(model="ppma_nano", input_size=32, crop_pct=1.0, data_path=str(root))
    model = timm.create_model("ppma_nano", num_classes=3)
    ckpt = tmp_path / "best.pth"
    card = model_card(config, ["class0", "class1", "class2"])
    torch.save({"model": model.state_dict(), **card, "config": config.to_dict()}, ckpt)
    given = evaluate_checkpoint(str(ckpt), data_path=str(root), workers=0)
    default = evaluate_checkpoint(str(ckpt), workers=0)
    assert given["images"] == 9
    assert {k: v for k, v in default.items() if k != "images_per_s"} == {k: v for k, v in given.items()
                                                                         if k != "images_per_s"}
    # the folder moved away: one line saying where the run's data was
    root.rename(tmp_path / "moved")
    assert main(["eval", "--checkpoint", str(ckpt), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"trained on {root}, which is not there; give --data-path" in err and "\n" not in err
