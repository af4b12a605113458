"""``ppma detect`` and ``ppma segment``: train, resume, eval, predict end to end on tiny generated data."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("pycocotools")

from test_dense_models import make_ade, make_coco  # noqa: E402

from ppma.cli import main  # noqa: E402


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_train_resume_eval_predict(tmp_path, capsys):
    make_coco(tmp_path / "gen", n_images=2, empty=1)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(tmp_path / "gen" / "img", root / "tiny")
    shutil.copy(tmp_path / "gen" / "ann.json", root / "annotations" / "instances_tiny.json")
    out = tmp_path / "run"
    common = [
        "detect",
        "train",
        "--data",
        str(root),
        "--train-split",
        "tiny",
        "--val-split",
        "tiny",
        "--backbone",
        "ppma_nano",
        "--heads",
        "light",
        "--min-size",
        "64",
        "--max-size",
        "96",
        "--max-iters",
        "1",
        "--warmup-iters",
        "1",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--output",
        str(out),
        "--quiet",
    ]
    assert main([*common, "--epochs", "1"]) == 0
    assert (out / "last.pth").is_file() and json.loads((out / "config.json").read_text())["lr_steps"] == [8, 11]
    assert main([*common, "--epochs", "2", "--resume", "auto"]) == 0  # continues at epoch 1
    assert [r["epoch"] for r in _log(out / "log.jsonl") if "bbox_mAP" in r] == [1, 2]
    capsys.readouterr()
    assert main(["detect", "eval", str(out / "last.pth"), "--json", str(tmp_path / "s.json")]) == 0
    assert "3 images: box mAP" in capsys.readouterr().out
    assert 0 <= json.loads((tmp_path / "s.json").read_text())["segm_mAP"] <= 1
    assert (
        main(
            [
                "detect",
                "predict",
                str(out / "last.pth"),
                str(root / "tiny" / "0.png"),
                "--output",
                str(tmp_path / "pred"),
                "--score-threshold",
                "0",
            ]
        )
        == 0
    )
    assert (tmp_path / "pred" / "0_pred.png").is_file()


def test_segment_train_resume_eval_predict(tmp_path, capsys):
    make_ade(tmp_path / "ade", 2, size=(36, 44))
    (tmp_path / "ade" / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    out = tmp_path / "run"
    common = [
        "segment",
        "train",
        "--data",
        str(tmp_path / "ade"),
        "--backbone",
        "ppma_nano",
        "--crop-size",
        "32",
        "--scale",
        "128x32",
        "--channels",
        "16",
        "--aux-channels",
        "8",
        "--warmup-iters",
        "1",
        "--eval-every",
        "2",
        "--workers",
        "0",
        "--output",
        str(out),
        "--quiet",
    ]
    assert main([*common, "--iters", "2"]) == 0
    assert main([*common, "--iters", "3", "--resume", "auto"]) == 0
    evals = [r["iteration"] for r in _log(out / "log.jsonl") if "mIoU" in r]
    assert evals == [2, 3]
    capsys.readouterr()
    assert main(["segment", "eval", str(out / "last.pth"), "--aug"]) == 0
    text = capsys.readouterr().out
    assert "multi-scale + flip: mIoU" in text and "b " in text
    assert (
        main(
            [
                "segment",
                "predict",
                str(out / "last.pth"),
                str(tmp_path / "ade" / "images" / "validation" / "0.jpg"),
                "--output",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    for suffix in ("labels", "color", "overlay"):
        assert (tmp_path / "pred" / f"0_{suffix}.png").is_file()


def test_bad_input_prints_one_line_and_exits_2(tmp_path, capsys):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "train2017").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text("{not json")
    assert main(["detect", "train", "--data", str(root), "--output", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppma detect: error: annotations") and "not valid JSON" in err and "\n" not in err
    assert main(["segment", "train", "--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["segment", "train", "--data", "builtin", "--batch-size", "1", "--output", str(tmp_path / "o")]) == 2
    assert "batch_size: the heads' BatchNorm" in capsys.readouterr().err
    assert main(["segment", "eval", str(root / "annotations" / "instances_train2017.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_segment_train_under_torchrun_two_cpu_processes_scores_like_one_process(tmp_path, capsys):
    import subprocess
    import sys

    make_ade(tmp_path / "ade", 3, size=(36, 44))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "ppma.cli",
        "segment",
        "train",
        "--data",
        str(tmp_path / "ade"),
        "--num-classes",
        "3",
        "--backbone",
        "ppma_nano",
        "--crop-size",
        "32",
        "--scale",
        "128x32",
        "--channels",
        "16",
        "--aux-channels",
        "8",
        "--iters",
        "2",
        "--eval-every",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--output",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, [line for line in run.stderr.splitlines() if "error" in line.lower()][:3]
    assert "2 process(es)" in run.stdout and run.stdout.count("done: mIoU") == 1  # rank 0 reports
    distributed_miou = [r["mIoU"] for r in _log(out / "log.jsonl") if "mIoU" in r][-1]
    assert main(["segment", "eval", str(out / "last.pth"), "--json", str(tmp_path / "s.json")]) == 0
    single = json.loads((tmp_path / "s.json").read_text())
    assert single["mIoU"] == pytest.approx(distributed_miou, abs=1e-12)  # 3 images split 2 + 1 across ranks, summed
