"""``ppma detect`` and ``ppma segment``: train, resume, eval, predict end to end on tiny generated data."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from test_dense_models import make_ade, make_coco_folder  # noqa: E402

from ppma.cli import main  # noqa: E402


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_train_resume_eval_predict(tmp_path, capsys):
    root = make_coco_folder(tmp_path, n_images=2, empty=1)
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
    assert main([*common, "--epochs", "2", "--max-iters", "2", "--resume", "auto"]) == 0  # continues at epoch 1
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


def _one_iteration_segment_run(tmp_path: Path) -> Path:
    """``tmp_path/run``: UPerNet on ppma_nano trained for one iteration on 2 ADE20K-layout images of classes
    a, b, c (``tmp_path/ade``, with its classes.json)."""
    make_ade(tmp_path / "ade", 2, size=(36, 44))
    (tmp_path / "ade" / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    out = tmp_path / "run"
    assert main(["segment", "train", "--data", str(tmp_path / "ade"), "--backbone", "ppma_nano", "--crop-size", "32",
                 "--scale", "128x32", "--channels", "16", "--aux-channels", "8", "--iters", "1", "--warmup-iters", "1",
                 "--workers", "0", "--output", str(out), "--quiet"]) == 0  # fmt: skip
    return out


def test_segment_eval_json_is_written_atomically(tmp_path, capsys, atomic_renames):
    """--json of the dense commands went through Path.write_text: a reader or a crash could see half a file.
    Now a temporary file beside it, renamed over the old one (ppma.checkpoint.atomic_write_text)."""
    out = _one_iteration_segment_run(tmp_path)
    scores = tmp_path / "scores" / "s.json"
    scores.parent.mkdir()
    scores.write_text("old scores")
    atomic_renames.clear()  # the run folder's checkpoint and config
    assert main(["segment", "eval", str(out / "last.pth"), "--json", str(scores)]) == 0
    capsys.readouterr()
    ((src, dst, held),) = atomic_renames
    assert dst == str(scores) and Path(src).parent == scores.parent and held == scores.read_bytes()
    assert 0 <= json.loads(scores.read_text())["mIoU"] <= 1
    assert [p.name for p in scores.parent.iterdir()] == ["s.json"]  # no temporary file left
    # a file where a folder belongs, or a folder where the file goes, were OSError tracebacks
    for target, what in ((scores / "x.json", f"{scores}: a file where a folder is needed"),
                         (scores.parent, f"{scores.parent}: a folder where a file is needed")):  # fmt: skip
        assert main(["segment", "eval", str(out / "last.pth"), "--json", str(target)]) == 2
        assert capsys.readouterr().err.strip() == f"ppma segment: error: {what}"
    assert main(["segment", "train", "--data", str(tmp_path / "ade"), "--output", str(scores)]) == 2
    assert capsys.readouterr().err.strip() == f"ppma segment: error: {scores}: a file where a folder is needed"
    assert [p.name for p in scores.parent.iterdir()] == ["s.json"]


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


def _same_weights(a, b) -> None:
    from ppma.checkpoint import read_checkpoint

    a, b = read_checkpoint(a), read_checkpoint(b)
    assert a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=1e-6, msg=name)
    assert b["scheduler"] == a["scheduler"]


def test_detection_killed_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path):
    """Never lose work: Mask R-CNN stopped mid-epoch, resumed from its last checkpoint, equals an unbroken run
    (random flips, RPN/RoI sampling and drop path all on; an evaluation after every epoch)."""
    from ppma.dense.detection import DetectConfig, train_detection

    root = make_coco_folder(tmp_path, n_images=4)
    config = DetectConfig(data=str(root), train_split="tiny", val_split="tiny", backbone="ppma_nano", heads="light",
                          min_size=64, max_size=96, epochs=2, batch_size=1, warmup_iters=2, drop_path_rate=0.2,
                          workers=0, quiet=True)  # 4 iterations per epoch  # fmt: skip
    train_detection(dataclasses.replace(config, output=str(tmp_path / "whole"), save_every=0))
    # killed at iteration 7; its last checkpoint is the one of iteration 6 (epoch 2, 2 of 4 steps done)
    cut = dataclasses.replace(config, output=str(tmp_path / "cut"), save_every=3, stop_after=7)
    assert train_detection(cut) == {}
    progress = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["progress"]
    assert progress == {"epoch": 1, "iteration": 6, "step_in_epoch": 2, "seen": 2 * 1}  # 2 steps of 1 image
    train_detection(dataclasses.replace(cut, stop_after=0, resume="auto"))
    _same_weights(tmp_path / "whole" / "last.pth", tmp_path / "cut" / "last.pth")


def test_segmentation_killed_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path):
    """The same for UPerNet: random rescale, crop and flip, drop path, evaluations every 3 iterations."""
    from ppma.dense.segmentation import SegmentConfig, train_segmentation

    make_ade(tmp_path / "ade", 6, size=(36, 44))
    (tmp_path / "ade" / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    config = SegmentConfig(data=str(tmp_path / "ade"), backbone="ppma_nano", crop_size=32, scale=(128, 32), channels=16,
                           aux_channels=8, iters=8, batch_size=2, warmup_iters=2, drop_path_rate=0.2, eval_every=3,
                           workers=0, quiet=True)  # 3 iterations per epoch  # fmt: skip
    train_segmentation(dataclasses.replace(config, output=str(tmp_path / "whole"), save_every=0))
    # killed at iteration 5; its last checkpoint is the one of iteration 4 (second epoch, one step in)
    cut = dataclasses.replace(config, output=str(tmp_path / "cut"), save_every=2, stop_after=5)
    assert train_segmentation(cut) == {}
    progress = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["progress"]
    assert progress == {"iteration": 4, "epoch": 1, "seen": 2}
    train_segmentation(dataclasses.replace(cut, stop_after=0, resume="auto"))
    _same_weights(tmp_path / "whole" / "last.pth", tmp_path / "cut" / "last.pth")


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_untrained_model_is_the_runs_first_weights_on_every_call(tmp_path, task):
    """--untrained built its model from whatever state torch's generator was in: another baseline score on
    every call. Now it is the model the run started from (seeded as the run), whatever the caller drew."""
    import importlib

    from ppma.checkpoint import read_checkpoint

    module = importlib.import_module(f"ppma.dense.{'detection' if task == 'detect' else 'segmentation'}")
    seed = int(torch.randint(1, 1000, ()))
    if task == "detect":
        root = make_coco_folder(tmp_path, n_images=2)
        config = module.DetectConfig(data=str(root), train_split="tiny", val_split="tiny", backbone="ppma_nano",
                                     heads="light", min_size=64, max_size=96, epochs=1, max_iters=1)  # fmt: skip
    else:
        make_ade(tmp_path / "data", 2, size=(36, 44))
        config = module.SegmentConfig(data=str(tmp_path / "data"), num_classes=3, backbone="ppma_nano", crop_size=32,
                                      scale=(128, 32), channels=16, aux_channels=8, iters=1)  # fmt: skip
    # lr 0: the checkpoint holds the first weights (BatchNorm statistics aside)
    config = dataclasses.replace(config, output=str(tmp_path / "run"), lr=0.0, seed=seed, workers=0, quiet=True)
    (module.train_detection if task == "detect" else module.train_segmentation)(config)
    first = read_checkpoint(tmp_path / "run" / "last.pth")["model"]
    torch.rand(7)  # the caller's generator is wherever it is
    a = module.model_from_checkpoint(tmp_path / "run" / "last.pth", weights=False)[0].state_dict()
    torch.rand(5)
    state = torch.get_rng_state()
    b = module.model_from_checkpoint(tmp_path / "run" / "last.pth", weights=False)[0].state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # and is left where it was
    params = [k for k in first if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for name in params:
        torch.testing.assert_close(a[name], first[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(b[name], first[name], rtol=0, atol=0, msg=name)


def test_predict_takes_folders_and_refuses_inputs_that_would_overwrite_each_other(tmp_path, capsys):
    """A folder was 'image: no file at DIR' (``ppma predict`` takes folders); two inputs with one stem
    (a/x.png, b/x.jpg) wrote the same NAME_* files, the second over the first, without a word."""
    make_ade(tmp_path / "ade", 3, size=(36, 44))
    out = tmp_path / "run"
    assert main(["segment", "train", "--data", str(tmp_path / "ade"), "--num-classes", "3", "--backbone", "ppma_nano",
                 "--crop-size", "32", "--scale", "128x32", "--channels", "16", "--aux-channels", "8", "--iters", "1",
                 "--warmup-iters", "1", "--workers", "0", "--output", str(out), "--quiet"]) == 0  # fmt: skip
    folder = tmp_path / "ade" / "images" / "validation"
    (folder / "notes.txt").write_text("not an image")
    capsys.readouterr()
    assert main(["segment", "predict", str(out / "last.pth"), str(folder), "--output", str(tmp_path / "pred")]) == 0
    assert capsys.readouterr().out.count(".jpg: ") == 3
    assert sorted(p.name for p in (tmp_path / "pred").glob("*_labels.png")) == [f"{i}_labels.png" for i in range(3)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    for task in ("segment", "detect"):  # was a FileExistsError traceback from mkdir
        assert main([task, "predict", str(out / "last.pth"), str(folder), "--output", str(tmp_path / "a_file")]) == 2
        assert "a_file is a file, not a folder" in capsys.readouterr().err
    assert main(["segment", "predict", str(out / "last.pth"), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    twin = tmp_path / "other" / "1.png"
    twin.parent.mkdir()
    shutil.copy(folder / "1.jpg", twin)
    for task in ("segment", "detect"):  # refused before the checkpoint is read
        assert main([task, "predict", str(tmp_path / "absent.pth"), str(folder), str(twin)]) == 2
        err = capsys.readouterr().err.strip()
        assert "1.jpg and " in err and "1.png would both write 1_" in err and "\n" not in err


def test_segment_eval_on_data_with_another_class_count_names_both(tmp_path, capsys):
    """The error said 'num_classes: 3 given' (eval has no --num-classes; 3 is the model's count). Now it names
    the data's classes.json, its count and the model's classes."""
    out = _one_iteration_segment_run(tmp_path)
    k = int(np.random.randint(4, 9))
    make_ade(tmp_path / "other", 1, size=(36, 44), classes=k)
    (tmp_path / "other" / "classes.json").write_text(json.dumps([f"n{i}" for i in range(k)]))
    capsys.readouterr()
    assert main(["segment", "eval", str(out / "last.pth"), "--data", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip() == (f"ppma segment: error: data: {tmp_path / 'other' / 'classes.json'} "
                                               f"names {k} classes but the model predicts 3 (a, b, c)")  # fmt: skip


def test_predict_goes_on_past_an_unreadable_image_and_a_bad_flag_leaves_no_folder(tmp_path, capsys):
    """One unreadable image stopped ``detect|segment predict`` over many (``ppma predict`` goes on): now it is a
    stderr line, an ``error`` record and exit status 1; none readable is status 2. A bad --grad-checkpointing
    was refused after the run folder was made (an empty folder left behind)."""
    make_ade(tmp_path / "ade", 2, size=(36, 44))
    seg_run = tmp_path / "seg"
    seg_args = ["--data", str(tmp_path / "ade"), "--num-classes", "3", "--backbone", "ppma_nano", "--crop-size", "32",
                "--scale", "128x32", "--channels", "16", "--aux-channels", "8", "--iters", "1", "--warmup-iters", "1",
                "--workers", "0", "--quiet"]  # fmt: skip
    assert main(["segment", "train", *seg_args, "--output", str(seg_run)]) == 0
    root = make_coco_folder(tmp_path, n_images=2)
    det_run = tmp_path / "det"
    det_args = ["--data", str(root), "--train-split", "tiny", "--val-split", "tiny", "--backbone", "ppma_nano",
                "--heads", "light", "--min-size", "64", "--max-size", "96", "--max-iters", "1", "--warmup-iters", "1",
                "--quiet"]  # fmt: skip
    assert main(["detect", "train", *det_args, "--output", str(det_run)]) == 0
    good = next((tmp_path / "ade" / "images" / "validation").glob("*.jpg"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(bytes(np.random.randint(0, 256, 64, dtype=np.uint8)))
    capsys.readouterr()
    for task, run in (("segment", seg_run), ("detect", det_run)):
        out = tmp_path / f"pred_{task}"
        assert main([task, "predict", str(run / "last.pth"), str(broken), str(good), "--output", str(out)]) == 1
        printed = capsys.readouterr()
        assert printed.err.startswith(f"ppma predict: skipped {broken}: not a readable image")
        assert printed.err.count("\n") == 1
        assert f"{good}: " in printed.out and str(broken) not in printed.out
        assert len(list(out.glob(f"{good.stem}_*.png"))) >= 1 and not list(out.glob("broken_*"))
        assert main([task, "predict", str(run / "last.pth"), str(broken), "--output", str(out)]) == 2
        assert f"predict: no readable image: {broken}: not a readable image" in capsys.readouterr().err
    records = json.loads((tmp_path / "pred_detect" / "predictions.json").read_text())
    assert [sorted(r) for r in records] == [["error", "file"], ["boxes", "drawn", "file", "labels", "scores"]]
    for task, args in (("segment", seg_args), ("detect", det_args)):
        assert main([task, "train", *args, "--grad-checkpointing", "5", "--output", str(tmp_path / "new")]) == 2
        assert "grad_checkpointing: stages are numbered 1..4" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()


def test_eval_of_a_builtin_run_reads_the_set_in_its_folder_from_any_directory(tmp_path, monkeypatch, capsys):
    """A built-in run saves its relative --output; ``segment eval`` run from another directory built a second
    copy of the set there, without a word. Now it reads the run folder's own data/."""
    pytest.importorskip("skimage")
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "train", "--data", "builtin", "--iters", "1", "--warmup-iters", "1", "--eval-every", "5",
                 "--output", "run", "--quiet"]) == 0  # fmt: skip
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run" / "data").rglob("*"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["segment", "eval", "../run/last.pth"]) == 0
    assert "4 images" in capsys.readouterr().out
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run" / "data").rglob("*")) == files


def _main_captured(argv: list[str]) -> tuple[int, str, str]:
    """(status, stdout, stderr) of ``ppma ARGV``, outside pytest's per-test capture (module fixtures)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bar_runs(tmp_path_factory):
    """Per task, two 2-iteration runs of one config: ``--quiet --progress`` (``bar``) and no flag (``plain``),
    with their stderr, and an image to predict on."""
    tmp = tmp_path_factory.mktemp("bars")
    root = make_coco_folder(tmp, n_images=2)
    make_ade(tmp / "ade", 2, size=(36, 44))
    (tmp / "ade" / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    train_args = {
        "detect": ["--data", str(root), "--train-split", "tiny", "--val-split", "tiny", "--backbone", "ppma_nano",
                   "--heads", "light", "--min-size", "64", "--max-size", "96", "--epochs", "1", "--batch-size", "1",
                   "--warmup-iters", "1", "--workers", "0"],
        "segment": ["--data", str(tmp / "ade"), "--backbone", "ppma_nano", "--crop-size", "32", "--scale", "128x32",
                    "--channels", "16", "--aux-channels", "8", "--iters", "2", "--eval-every", "2", "--warmup-iters",
                    "1", "--workers", "0"],
    }  # fmt: skip
    images = {"detect": root / "tiny" / "0.png", "segment": tmp / "ade" / "images" / "validation" / "0.jpg"}
    runs = {}
    for task, args in train_args.items():
        runs[task] = {"args": args, "image": images[task], "tmp": tmp}
        for name, flags in (("bar", ["--quiet", "--progress"]), ("plain", [])):
            status, _, err = _main_captured([task, "train", *args, *flags, "--output", str(tmp / task / name)])
            assert status == 0
            runs[task][name], runs[task][f"{name}_err"] = tmp / task / name / "last.pth", err
    return runs


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_dense_commands_show_a_progress_bar_on_stderr_only_when_asked_or_on_a_terminal(bar_runs, task, capsys):
    """``ppma detect|segment train|eval|predict`` showed no bar (a COCO epoch, an ADE20K multi-scale evaluation:
    minutes without a sign of life). Now tqdm on stderr, as ``ppma train``: ``--progress`` forces it (over
    ``--quiet`` too), without a terminal and without the flag nothing is written to stderr."""
    run = bar_runs[task]
    train_desc = "epoch 1/1" if task == "detect" else "train"
    assert train_desc in run["bar_err"] and "eval" in run["bar_err"] and "it/s" in run["bar_err"]
    assert run["plain_err"] == ""
    out = run["tmp"] / f"pred_{task}"
    for flags, shown in ((["--progress"], True), ([], False)):  # --no-progress: the resume test
        assert main([task, "eval", str(run["plain"]), *flags]) == 0
        err = capsys.readouterr().err
        assert ("eval:" in err and "it/s" in err) if shown else err == ""
        assert main([task, "predict", str(run["plain"]), str(run["image"]), "--output", str(out), *flags]) == 0
        err = capsys.readouterr().err
        assert ("predict:" in err and "it/s" in err) if shown else err == ""


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_the_progress_bar_changes_no_result_and_no_resume_reports_it(bar_runs, task, capsys):
    """The weights after 2 iterations with and without the bar are bit for bit the same; a run of ``--progress``
    resumed with ``--no-progress`` is no settings change (``progress`` is logistics, as ``--quiet``)."""
    from ppma.checkpoint import read_checkpoint

    run = bar_runs[task]
    a, b = read_checkpoint(run["bar"]), read_checkpoint(run["plain"])
    assert a["progress"] == b["progress"] and a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    copy = run["tmp"] / f"resumed_{task}"
    shutil.copytree(run["bar"].parent, copy)
    capsys.readouterr()
    # a finished run resumed: the settings are compared (and nothing is left to train)
    assert main([task, "train", *run["args"], "--no-progress", "--output", str(copy), "--resume"]) == 0
    printed = capsys.readouterr()
    assert "resumed from" in printed.out and "settings changed" not in printed.out and printed.err == ""


def test_quiet_turns_the_bar_off_on_a_terminal_unless_progress_is_given(monkeypatch):
    from ppma.dense.detection import DetectConfig
    from ppma.dense.engine import show_progress
    from ppma.dense.segmentation import SegmentConfig
    from ppma.runtime import progress_bar

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    for cls in (DetectConfig, SegmentConfig):
        for quiet, progress, shown in ((False, None, True), (True, None, False), (True, True, True),
                                       (False, False, False)):  # fmt: skip
            bar = progress_bar(range(2), 2, "x", show_progress(cls(quiet=quiet, progress=progress)), rank=0)
            assert bar.disable != shown, (cls.__name__, quiet, progress)
            bar.close()
