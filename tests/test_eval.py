"""ppma eval: published .pth files and ours, the published evaluation transform, exact metrics."""

from __future__ import annotations

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


def test_published_checkpoint_evaluates_like_a_hand_written_loop(published_nano, capsys):
    """The published nano fixture (10 classes, published key names, EMA) on the digits val split, at 32 px."""
    from conftest import PUBLISHED_NANO

    metrics = evaluate_checkpoint(PUBLISHED_NANO, None, model_name="ppma_nano", workers=0, batch_size=100)
    assert metrics["weights"] == "ema" and metrics["images"] == 360 and metrics["input_size"] == 32

    model = timm.create_model("ppma_nano", num_classes=10).eval()
    load_into(model, PUBLISHED_NANO, use_ema=True)
    tf = build_transform(TrainConfig(input_size=32, crop_pct=1.0, interpolation="bicubic"), is_training=False)
    data = DigitsDataset("val", size=32)
    with torch.no_grad():
        logits = model(torch.stack([tf(data[i][0]) for i in range(len(data))])).double()
    targets = torch.tensor(data.targets)
    top5 = logits.topk(5, dim=1).indices
    assert metrics["top1"] == pytest.approx(100 * (logits.argmax(1) == targets).double().mean().item())
    assert metrics["top5"] == pytest.approx(100 * (top5 == targets[:, None]).any(1).double().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)

    assert main(["eval", "--checkpoint", str(PUBLISHED_NANO), "--model", "ppma_nano", "--weights", "model",
                 "--workers", "0"]) == 0  # fmt: skip
    assert "ppma_nano (model weights, 32px" in capsys.readouterr().out


def test_published_checkpoint_without_a_model_name_is_a_one_line_error(published_nano, capsys):
    from conftest import PUBLISHED_NANO

    assert main(["eval", "--checkpoint", str(PUBLISHED_NANO)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --model" in err and "\n" not in err
