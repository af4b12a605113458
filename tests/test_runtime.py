"""The shared run runtime (``ppma.runtime``) and the CLI package's shared parts (``ppma.cli.options``)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import ppma  # noqa: F401  (registers the models)
from ppma.cli.options import add_dataclass_flags, given_flags, size
from ppma.runtime import param_groups, resume_checkpoint, warmup_multistep, warmup_poly

SRC = Path(__file__).resolve().parent.parent / "src" / "ppma"


def _lrs(scheduler, optimizer, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.randn(3))], lr=lr)


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_detection_schedule_equals_the_mmdetection_formula_at_every_step(warmup):
    base, ratio, per_epoch, steps, epochs = random.uniform(1e-4, 1e-2), 0.001, 5, (8, 11), 12
    opt = _optimizer(base)
    got = _lrs(warmup_multistep(opt, warmup, ratio, [s * per_epoch for s in steps]), opt, epochs * per_epoch)
    for it, lr in enumerate(got):  # the formula of the published config, in float64
        f = 0.1 ** sum(it // per_epoch >= s for s in steps)
        if it < warmup:
            f *= ratio + (1 - ratio) * it / warmup
        assert lr == pytest.approx(base * f, rel=1e-12, abs=0), it


@pytest.mark.parametrize("power", [1.0, 0.9])
def test_segmentation_schedule_equals_the_mmsegmentation_formula_at_every_step(power):
    base, ratio, warmup, total = random.uniform(1e-5, 1e-3), 1e-6, 9, 60
    opt = _optimizer(base)
    got = _lrs(warmup_poly(opt, warmup, ratio, total, power), opt, total + 3)
    for it, lr in enumerate(got):
        f = (1 - min(it, total) / total) ** power
        if it < warmup:
            f *= ratio + (1 - ratio) * it / warmup
        assert lr == pytest.approx(base * f, rel=1e-10, abs=1e-300), it


def test_weight_decay_policy_keeps_each_published_recipe():
    from timm.optim import param_groups_weight_decay

    model = timm.create_model("ppma_nano", num_classes=5)
    ours = param_groups(model, 0.05, decay_layer_scale=True)
    timms = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in timms] == [0.0, 0.05]
    for a, b in zip(ours, timms, strict=True):  # classification: exactly timm's groups (gammas decayed)
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    dense = param_groups(model, 0.05, decay_layer_scale=False)
    no_decay = {names[id(p)] for p in dense[0]["params"]}
    gammas = {n for n in names.values() if n.endswith(".gamma")}
    assert gammas and gammas <= no_decay  # dense: gammas exempt, the rest as for classification
    assert no_decay - gammas == {names[id(p)] for p in ours[0]["params"]}
    assert all(names[id(p)].endswith(".weight") for p in dense[1]["params"])


def test_resume_means_the_same_everywhere(tmp_path):
    out = tmp_path / "run"
    assert resume_checkpoint(None, out) is None
    assert resume_checkpoint("auto", out) is None  # nothing there yet: a fresh start
    for bad in ("", str(out), str(tmp_path / "x.pth")):
        with pytest.raises(FileNotFoundError, match="nothing to resume"):
            resume_checkpoint(bad, out)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resume_checkpoint("", None)
    out.mkdir()
    (out / "last.pth").write_bytes(b"x")
    (tmp_path / "other.pth").write_bytes(b"y")
    for value in ("", "auto", str(out)):
        assert resume_checkpoint(value, out) == out / "last.pth"
    assert resume_checkpoint(str(tmp_path / "other.pth"), out) == tmp_path / "other.pth"


def test_one_size_parser():
    assert size("224") == (224, 224) and size("512x768") == (512, 768) and size("3,4") == (3, 4)
    for bad in ("0", "12x", "axb", "1x2x3", "-3", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="size like"):
            size(bad)


def test_dataclass_flags_are_typed_and_only_given_ones_are_returned():
    from ppma.dense.detection import DetectConfig
    from ppma.dense.segmentation import SegmentConfig

    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, SegmentConfig)
    args = parser.parse_args(["--scale", "2048x512", "--no-amp", "--drop-path-rate", "none", "--resume"])
    assert given_flags(args, SegmentConfig) == {"scale": (2048, 512), "amp": False, "drop_path_rate": None,
                                                "resume": ""}  # fmt: skip
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, DetectConfig)
    given = given_flags(parser.parse_args(["--lr-steps", "8,11", "--multiscale", "--lr", "2e-4"]), DetectConfig)
    assert given == {"lr_steps": (8, 11), "multiscale": True, "lr": 2e-4}
    assert dataclasses.replace(DetectConfig(), **given).lr_steps == (8, 11)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr", "fast"])


def test_argparse_is_imported_only_by_the_cli_package():
    importers = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if "argparse" in names and path.parent.name != "cli" and path.name != "checkpoint.py":
                importers.append(str(path.relative_to(SRC)))
    # checkpoint.py names argparse.Namespace only to let the published files' stored arguments unpickle
    assert importers == []


def test_the_console_script_and_python_m_reach_the_same_parser():
    import subprocess
    import sys

    from ppma.cli import build_parser

    out = subprocess.run([sys.executable, "-m", "ppma.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("info", "convert", "backends", "train", "eval", "predict", "viz", "detect", "segment", "ablate"):
        assert command in out.stdout
    assert build_parser().parse_args(["detect", "train", "--resume"]).resume == ""


def test_run_folder_refuses_a_second_fresh_run(tmp_path):
    from ppma.errors import PPMAError
    from ppma.runtime import DistInfo, RunFolder

    folder = RunFolder(tmp_path / "r", DistInfo()).open(resuming=False)
    folder.save({"x": torch.randn(2)})
    folder.close()
    assert (tmp_path / "r" / "last.pth").is_file() and not list((tmp_path / "r").glob("*.tmp"))
    with pytest.raises(PPMAError, match="already holds a run"):
        RunFolder(tmp_path / "r", DistInfo()).open(resuming=False)
    RunFolder(tmp_path / "r", DistInfo()).open(resuming=True).close()


def test_a_locked_folder_is_refused_and_stale_files_are_cleaned(tmp_path, capsys):
    from ppma.errors import PPMAError
    from ppma.runtime import DistInfo, RunFolder

    folder = tmp_path / "r"
    folder.mkdir()
    (folder / ".lock").write_text("999999")  # a crashed run's lock file (the OS released its lock)
    (folder / ".last.pth.x1y2.tmp").write_bytes(b"half a checkpoint")
    first = RunFolder(folder, DistInfo()).open(resuming=False)
    out = capsys.readouterr().out
    assert "pid 999999" in out and "taken over" in out and "removed 1 temporary file" in out
    assert not list(folder.glob("*.tmp"))
    with pytest.raises(PPMAError, match="in use by another run"):
        RunFolder(folder, DistInfo()).open(resuming=True)
    first.close()
    assert sorted(p.name for p in folder.iterdir()) == []  # released: the lock file is gone
    RunFolder(folder, DistInfo()).open(resuming=True).close()  # free again, nothing reported
    assert "taken over" not in capsys.readouterr().out


class _SignalAt:
    """A dataset that sends this process SIGTERM when its ``n``-th item is read (mid-epoch, mid-step)."""

    def __init__(self, inner, n: int) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "left", n)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        object.__setattr__(self, "left", self.left - 1)
        if self.left == 0:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return self.inner[i]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)


def _same_checkpoints(a, b, keys=("model",)) -> None:
    from ppma.checkpoint import read_checkpoint

    a, b = read_checkpoint(a), read_checkpoint(b)
    for key in keys:
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    assert b["scheduler"] == a["scheduler"] and b["progress"] == a["progress"]


def test_sigterm_mid_epoch_saves_and_resume_equals_an_unbroken_train_run(tmp_path, monkeypatch, capsys):
    from imagefolder import make_image_folder

    import ppma.train.engine as engine
    from ppma.cli import main

    root = make_image_folder(tmp_path / "data", classes=3, train=4, val=1, size=(32, 32))
    argv = ["train", "--data-path", str(root), "--model", "ppma_nano", "--input-size", "32", "--batch-size", "4",
            "--epochs", "2", "--lr", "1e-3", "--warmup-epochs", "1", "--workers", "0", "--deterministic",
            "--no-plot", "--drop-path", "0.1"]  # 3 steps per epoch  # fmt: skip
    torch.set_num_threads(1)
    assert main([*argv, "--output-dir", str(tmp_path / "whole")]) == 0
    build = engine.build_datasets

    def signalled(config):  # SIGTERM while reading the 2nd batch of epoch 2 (item 18 of 24)
        train, val, classes = build(config)
        return _SignalAt(train, 18), val, classes

    monkeypatch.setattr(engine, "build_datasets", signalled)
    assert main([*argv, "--output-dir", str(tmp_path / "cut")]) == 143  # 128 + SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at epoch 2, step 5" in err and "--resume" in err
    monkeypatch.setattr(engine, "build_datasets", build)
    assert main([*argv, "--output-dir", str(tmp_path / "cut"), "--resume"]) == 0
    _same_checkpoints(tmp_path / "whole" / "last.pth", tmp_path / "cut" / "last.pth", ("model", "model_ema"))


def test_sigterm_mid_epoch_saves_and_resume_equals_an_unbroken_segmentation_run(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    import json

    from test_dense_models import make_ade

    import ppma.dense.segmentation as seg
    from ppma.runtime import RunStopped

    make_ade(tmp_path / "ade", 6, size=(36, 44))
    (tmp_path / "ade" / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    config = seg.SegmentConfig(data=str(tmp_path / "ade"), backbone="ppma_nano", crop_size=32, scale=(128, 32),
                               channels=16, aux_channels=8, iters=6, batch_size=2, warmup_iters=2, drop_path_rate=0.2,
                               eval_every=3, save_every=0, workers=0, quiet=True)  # 3 iterations per epoch  # fmt: skip
    torch.set_num_threads(1)
    seg.train_segmentation(dataclasses.replace(config, output=str(tmp_path / "whole")))
    make = seg.make_dataset

    def signalled(root, cfg, num_classes, train):  # SIGTERM while reading iteration 5's batch (items 9, 10)
        dataset = make(root, cfg, num_classes, train)
        return _SignalAt(dataset, 9) if train else dataset

    monkeypatch.setattr(seg, "make_dataset", signalled)
    cut = dataclasses.replace(config, output=str(tmp_path / "cut"))
    with pytest.raises(RunStopped, match="stopped by SIGTERM at iteration 5"):
        seg.train_segmentation(cut)
    monkeypatch.setattr(seg, "make_dataset", make)
    seg.train_segmentation(dataclasses.replace(cut, resume=""))
    _same_checkpoints(tmp_path / "whole" / "last.pth", tmp_path / "cut" / "last.pth")


def test_sigterm_mid_epoch_saves_and_resume_equals_an_unbroken_detection_run(tmp_path, monkeypatch):
    pytest.importorskip("pycocotools")
    from test_dense_models import make_coco_folder

    import ppma.dense.detection as det
    from ppma.runtime import RunStopped

    root = make_coco_folder(tmp_path, n_images=4)
    config = det.DetectConfig(data=str(root), train_split="tiny", val_split="tiny", backbone="ppma_nano",
                              heads="light", min_size=64, max_size=96, epochs=2, batch_size=1, warmup_iters=2,
                              drop_path_rate=0.2, save_every=0, workers=0, quiet=True)  # 4 its/epoch  # fmt: skip
    torch.set_num_threads(1)
    det.train_detection(dataclasses.replace(config, output=str(tmp_path / "whole")))
    split = det.coco_split

    def signalled(root, name, train):  # SIGTERM while reading iteration 6's image (epoch 2, step 2)
        dataset = split(root, name, train)
        return _SignalAt(dataset, 6) if train else dataset

    monkeypatch.setattr(det, "coco_split", signalled)
    cut = dataclasses.replace(config, output=str(tmp_path / "cut"))
    with pytest.raises(RunStopped, match="stopped by SIGTERM at iteration 6"):
        det.train_detection(cut)
    assert torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["progress"] == {
        "epoch": 1, "iteration": 6, "step_in_epoch": 2, "seen": 2}  # fmt: skip
    assert not (tmp_path / "cut" / ".lock").exists()  # released and removed: the next run starts without a word
    monkeypatch.setattr(det, "coco_split", split)
    det.train_detection(dataclasses.replace(cut, resume=""))
    _same_checkpoints(tmp_path / "whole" / "last.pth", tmp_path / "cut" / "last.pth")


def test_dense_runs_resumed_with_another_batch_size_go_on_after_the_images_their_epoch_trained(tmp_path):
    """Stopped after one iteration, resumed with a smaller batch: the epoch goes on with the images it has not
    trained. Both commands skipped iterations x the new batch size, training some images twice."""
    pytest.importorskip("pycocotools")
    pytest.importorskip("skimage")
    from test_dense_models import make_ade, make_coco_folder

    import ppma.dense.detection as det
    import ppma.dense.segmentation as seg
    from ppma.checkpoint import atomic_save

    torch.set_num_threads(1)
    root = make_coco_folder(tmp_path, n_images=4)
    config = det.DetectConfig(data=str(root), train_split="tiny", val_split="tiny", backbone="ppma_nano",
                              heads="light", min_size=64, max_size=96, epochs=1, batch_size=2, warmup_iters=2,
                              save_every=1, stop_after=1, workers=0, quiet=True, output=str(tmp_path / "det"))
    det.train_detection(config)
    cut = torch.load(tmp_path / "det" / "last.pth", weights_only=True)
    assert cut["progress"].pop("seen") == 2
    atomic_save(cut, tmp_path / "det" / "last.pth")  # as files of the earlier version: steps at their batch size
    det.train_detection(dataclasses.replace(config, batch_size=1, stop_after=0, resume=""))
    progress = torch.load(tmp_path / "det" / "last.pth", weights_only=True)["progress"]
    assert progress == {"epoch": 1, "iteration": 1 + 2, "step_in_epoch": 0, "seen": 0}  # 2 + 2 images: 4

    make_ade(tmp_path / "ade", 6, size=(36, 44))
    (tmp_path / "ade" / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    config = seg.SegmentConfig(data=str(tmp_path / "ade"), backbone="ppma_nano", crop_size=32, scale=(128, 32),
                               channels=16, aux_channels=8, iters=2, batch_size=3, warmup_iters=2, eval_every=100,
                               save_every=1, stop_after=1, workers=0, quiet=True, output=str(tmp_path / "seg"))
    seg.train_segmentation(config)
    seg.train_segmentation(dataclasses.replace(config, batch_size=2, stop_after=0, resume=""))
    progress = torch.load(tmp_path / "seg" / "last.pth", weights_only=True)["progress"]
    assert progress == {"iteration": 2, "epoch": 0, "seen": 3 + 2}  # 5 of the epoch's 6 images, each once


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A finished 1-epoch classification run on a tiny image folder, and its command line."""
    from imagefolder import make_image_folder

    from ppma.cli import main

    tmp = tmp_path_factory.mktemp("short")
    root = make_image_folder(tmp / "data", classes=2, train=4, val=1, size=(32, 32))
    argv = ["train", "--data-path", str(root), "--model", "ppma_nano", "--input-size", "32", "--batch-size", "4",
            "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--workers", "0", "--no-plot"]  # fmt: skip
    torch.set_num_threads(1)
    assert main([*argv, "--output-dir", str(tmp / "r")]) == 0
    return tmp, argv


def test_resume_with_changed_settings_says_what_changed(short_run, tmp_path, capsys):
    from ppma.cli import main

    src, argv = short_run
    run = tmp_path / "r"
    shutil_copy_run(src / "r", run)
    capsys.readouterr()
    changed = ["--epochs", "2", "--batch-size", "2", "--no-ema", "--workers", "1"]
    assert main(["train", "--resume", str(run), *changed]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("resume: settings changed"))
    assert "batch_size 4 -> 2" in line and "ema True -> False" in line and "epochs 1 -> 2" in line
    assert "workers" not in line and "output_dir" not in line and "resume" not in line.removeprefix("resume:")
    assert main(["train", "--resume", str(run), "--epochs", "3", "--batch-size", "2", "--no-ema"]) == 0
    assert "batch_size" not in capsys.readouterr().out  # only what differs from the saved run (now epochs)
    from ppma.checkpoint import read_checkpoint

    assert read_checkpoint(run / "last.pth")["progress"]["epoch"] == 3  # the copy continued in its own folder,
    assert read_checkpoint(src / "r" / "last.pth")["progress"]["epoch"] == 1  # not in the one its file names


def shutil_copy_run(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))


def test_resume_into_another_folder_continues_there_and_refuses_a_finished_run(short_run, tmp_path, capsys):
    from ppma.checkpoint import read_checkpoint
    from ppma.cli import main

    src, argv = short_run
    run = tmp_path / "r"
    shutil_copy_run(src / "r", run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--output-dir", str(tmp_path / "new")]) == 2  # finished: 1 of 1 epochs
    err = capsys.readouterr().err
    assert "has finished its 1 epochs, nothing to train into" in err and "--epochs above 1" in err
    assert not (tmp_path / "new").exists()
    assert main(["train", "--resume", str(run), "--output-dir", str(tmp_path / "new"), "--epochs", "2"]) == 0
    assert f"checkpoints in {tmp_path / 'new'}" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "new" / "last.pth")["progress"]["epoch"] == 2
    logged = [json.loads(line) for line in (tmp_path / "new" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2]  # the run's whole log, not only the epochs trained here
    assert logged[0] == json.loads((run / "log.jsonl").read_text())
    best = read_checkpoint(tmp_path / "new" / "best.pth")  # carried over, or the better epoch 2's
    assert best["epoch"] in (1, 2) and read_checkpoint(run / "last.pth")["progress"]["epoch"] == 1  # source untouched


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous_file(
    short_run, tmp_path, monkeypatch, capsys
):
    import errno

    from ppma.checkpoint import read_checkpoint
    from ppma.cli import main

    src, argv = short_run
    run = tmp_path / "r"
    shutil_copy_run(src / "r", run)
    before = (run / "last.pth").read_bytes()
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # half a file, then no space left (f: a path or a file object)
        with open(f, "ab") if isinstance(f, str | Path) else contextlib.nullcontext(f) as out:
            out.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppma train: error: checkpoint: cannot write") and "(disk full)" in err
    assert "intact" in err and "\n" not in err
    assert (run / "last.pth").read_bytes() == before and not list(run.glob(".*.tmp"))
    assert read_checkpoint(run / "last.pth")["progress"]["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)  # space again: the same command continues the run
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert read_checkpoint(run / "last.pth")["progress"]["epoch"] == 2


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, None

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _shards(n: int, world: int, seed: int, epoch: int, skip: int = 0) -> list[list[int]]:
    from ppma.runtime.sampler import ResumableSampler

    shards = []
    for rank in range(world):
        s = ResumableSampler(_Items(n), world, rank, seed)
        s.set_epoch(epoch, skip=skip)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) and s.dataset.epoch == epoch
    return shards


@pytest.mark.parametrize("n, world", [(1, 1), (17, 1), (17, 2), (17, 3), (16, 4), (5, 8)])
def test_resumable_sampler_shuffles_as_torchs_distributed_sampler(n, world):
    """Unskipped, and skipped by whole rounds of the same process count, the shards are torch's."""
    from torch.utils.data.distributed import DistributedSampler

    seed, epoch = random.randrange(1000), random.randrange(10)
    for rank, shard in enumerate(_shards(n, world, seed, epoch)):
        torch_sampler = DistributedSampler(_Items(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        torch_sampler.set_epoch(epoch)
        expected = list(torch_sampler)
        assert shard == expected
        k = random.randrange(len(expected) + 1)
        assert _shards(n, world, seed, epoch, skip=k * world)[rank] == expected[k:]


@pytest.mark.parametrize("before, after", [(2, 3), (3, 2), (4, 1), (1, 4), (2, 2)])
def test_resumable_sampler_resumed_with_another_process_count_trains_the_rest_of_the_epoch(before, after):
    """After k items per process of ``before`` processes, ``after`` processes get exactly the images the epoch
    has not trained yet (plus padding to equal shares), never one already trained; it used to reshuffle the
    shards (some images twice, others never)."""
    n, seed, epoch = random.randrange(20, 60), random.randrange(1000), random.randrange(10)
    full = _shards(n, before, seed, epoch)
    k = random.randrange(1, len(full[0]))
    trained = {i for shard in full for i in shard[:k]}
    rest = _shards(n, after, seed, epoch, skip=k * before)
    assert len({len(shard) for shard in rest}) == 1  # equal shares: no process waits for another's extra batch
    rest_items = [i for shard in rest for i in shard]
    assert trained | set(rest_items) == set(range(n))
    untrained = set(range(n)) - trained
    assert sum(i in untrained for i in rest_items) >= len(untrained)  # every untrained image comes
    # the padding is all that comes again: the order's, to a multiple of the new count, and the rest's (each at
    # most after - 1 repeats)
    assert len(rest_items) - len(untrained) <= 2 * (after - 1)


def test_a_log_line_clears_the_progress_bar_and_redraws_it_below(capsys):
    """RunLog.print wrote its line through a bar on the terminal (stdout and stderr share it): the line began
    after the bar's text. Now the bar is cleared, the line written, the bar drawn again (tqdm.write)."""
    from ppma.runtime import RunLog, progress_bar

    desc = f"bar{np.random.randint(1000)}"
    with progress_bar(range(3), 3, desc, True, rank=0):
        capsys.readouterr()
        RunLog(None).print("iteration 20  loss 1.5")
        out, err = capsys.readouterr()
    assert out == "iteration 20  loss 1.5\n"
    assert err.startswith("\r") and err.count(f"{desc}:") == 1  # cleared, then drawn again after the line
    assert progress_bar(range(3), 3, desc, None, rank=0).disable  # not a terminal: no bar (and nothing cleared)
