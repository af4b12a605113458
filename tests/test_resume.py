"""Never lose work: a run stopped mid-epoch and resumed ends with the same weights as one never stopped."""

from __future__ import annotations

import json

import pytest
import torch
from imagefolder import make_image_folder, one_thread  # noqa: F401  (one_thread: autouse fixture)

from ppma.checkpoint import read_checkpoint
from ppma.train import TrainConfig, run
from ppma.runtime import capture_rng, restore_rng


def test_killed_mid_epoch_and_resumed_run_ends_with_the_same_weights(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, train=8, val=2, size=(36, 40))
    # The ImageNet recipe's random parts all on: RandAugment, random erasing, mixup/cutmix (numpy RNG),
    # drop path (torch RNG), EMA, per-step schedule with warm-up; 6 updates per epoch.
    config = TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=2, lr=1e-3,
                         warmup_epochs=1, drop_path=0.2, workers=0, deterministic=True, plot=False)  # fmt: skip
    whole = run(config.replace(output_dir=str(tmp_path / "whole")))
    # "Killed" at step 9 (epoch 2, step 3 of 6): the last checkpoint is the one of step 8, mid-epoch.
    cut = run(config.replace(output_dir=str(tmp_path / "cut"), save_every_steps=4, stop_after_steps=9))
    assert cut["stopped"] and cut["steps"] == 9
    saved = read_checkpoint(tmp_path / "cut" / "last.pth")
    assert (saved["progress"]["epoch"], saved["progress"]["step"], saved["progress"]["step_in_epoch"]) == (1, 8, 2)
    resumed = run(config.replace(output_dir=str(tmp_path / "cut"), resume=""))
    assert resumed["steps"] == whole["steps"] == 12

    a, b = read_checkpoint(tmp_path / "whole" / "last.pth"), read_checkpoint(tmp_path / "cut" / "last.pth")
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=0, atol=1e-6, msg=f"{key}.{name}")
    for name, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][name]["exp_avg_sq"], state["exp_avg_sq"], rtol=0, atol=1e-9)
    assert b["scheduler"] == a["scheduler"]
    log_a = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_b] == [1, 2]  # the stopped run logged epoch 1, the resumed one epoch 2
    for key in ("train_loss", "top1", "loss", "ema_top1", "lr", "train_images"):
        assert log_b[-1][key] == pytest.approx(log_a[-1][key], rel=1e-6), key


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from ppma.checkpoint import atomic_save

    random.random(), np.random.rand(), torch.rand(1)
    atomic_save({"rng": capture_rng()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(3), torch.rand(3), np.random.randn())
    restore_rng(read_checkpoint(tmp_path / "rng.pth")["rng"])
    got = (random.random(), np.random.rand(3), torch.rand(3), np.random.randn())
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
    assert got[3] == expected[3]


def _state(config, updates_per_epoch: int):
    """A RunState of a small linear model with ``config``'s optimizer and schedule (no EMA)."""
    from ppma.train.engine import _build_scheduler, build_optimizer, resolve_lr
    from ppma.train.state import RunState

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, config, resolve_lr(config, config.batch_size))
    return RunState(model, optimizer, _build_scheduler(optimizer, config, updates_per_epoch), torch.amp.GradScaler(
        "cpu", enabled=False))  # fmt: skip


def test_resume_with_another_schedule_or_optimizer_setting_follows_the_new_one(tmp_path):
    """The saved scheduler and optimizer settings must not override the flags a resume gives (they did:
    ``--epochs 4`` on a 2-epoch run kept the 2-epoch cosine, lr at min_lr for epochs 3 and 4)."""
    from ppma.checkpoint import atomic_save
    from ppma.train import digits_config

    old = digits_config(epochs=2, lr=2e-3, weight_decay=0.05)
    state = _state(old, updates_per_epoch=10)
    for step in range(1, 21):  # two epochs of updates with random gradients
        for p in state.model.parameters():
            p.grad = torch.randn_like(p)
        state.optimizer.step()
        state.step = step
        state.scheduler.step_update(num_updates=step)
    state.epoch = 2
    meta = {"model_name": "m", "classes": list("abcd"), "config": old.to_dict(), "num_classes": 4}
    atomic_save(state.checkpoint(meta, rng=[]), tmp_path / "last.pth")

    new = old.replace(epochs=4, lr=3e-3, weight_decay=0.01, min_lr=1e-6)
    resumed = _state(new, updates_per_epoch=10)
    resumed.load(tmp_path / "last.pth", expect=meta)
    resumed.scheduler.step_update(num_updates=resumed.step)
    fresh = _state(new, updates_per_epoch=10)  # the new schedule, at the same step
    fresh.scheduler.step_update(num_updates=20)
    lr = fresh.optimizer.param_groups[0]["lr"]
    assert lr > 1e-3  # mid-cosine of 4 epochs, not the old end's min_lr
    for got, want in zip(resumed.optimizer.param_groups, fresh.optimizer.param_groups, strict=True):
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12) and got["weight_decay"] == want["weight_decay"]
    for name, moments in state.optimizer.state_dict()["state"].items():  # the moments are the saved run's
        assert torch.equal(resumed.optimizer.state_dict()["state"][name]["exp_avg"], moments["exp_avg"])


def test_resumed_with_another_batch_size_the_epoch_goes_on_where_it_stopped(tmp_path, checkpoint_reads):
    """The sampler skips the images the epoch consumed (it skipped steps x the new batch size: 4 of 8 here,
    so 4 images were trained twice in that epoch). The resumed checkpoint is read once (finished-run check
    and set-up share it)."""
    root = make_image_folder(tmp_path / "data", classes=3, train=8, val=2, size=(32, 32))
    config = TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=1, lr=1e-3,
                         warmup_epochs=0, workers=0, plot=False, output_dir=str(tmp_path / "r"))  # fmt: skip
    cut = run(config.replace(save_every_steps=2, stop_after_steps=3))  # saved at step 2: 8 of 24 images done
    assert cut["stopped"]
    checkpoint_reads.clear()
    resumed = run(config.replace(batch_size=2, resume=""))
    assert checkpoint_reads.count((tmp_path / "r" / "last.pth").resolve()) == 1
    assert resumed["steps"] == 2 + 16 // 2
    assert resumed["history"][0]["train_images"] == 24  # every training image once


def test_a_checkpoint_of_an_earlier_version_resumes_where_it_stopped(tmp_path):
    """Earlier files counted the epoch's consumed images per process (``samples``): resumed, they skip as many
    positions times the saved process count (one here), as the files of this version do (``seen``)."""
    from ppma.checkpoint import atomic_save

    root = make_image_folder(tmp_path / "data", classes=3, train=8, val=2, size=(32, 32))
    config = TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=1, lr=1e-3,
                         warmup_epochs=0, workers=0, plot=False, output_dir=str(tmp_path / "r"))  # fmt: skip
    run(config.replace(save_every_steps=2, stop_after_steps=3))  # saved at step 2: 8 of 24 images done
    ckpt = read_checkpoint(tmp_path / "r" / "last.pth")
    assert ckpt["epoch_stats"]["seen"] == 8
    ckpt["epoch_stats"]["samples"] = ckpt["epoch_stats"].pop("seen")
    atomic_save(ckpt, tmp_path / "r" / "last.pth")
    resumed = run(config.replace(resume=""))
    assert resumed["steps"] == 2 + 16 // 4


def _finished_run(tmp_path) -> tuple[TrainConfig, dict]:
    """A 1-epoch run that has trained all its epochs: its config and its summary."""
    root = make_image_folder(tmp_path / "data", classes=2, train=4, val=2, size=(32, 32))
    config = TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=1, workers=0,
                         output_dir=str(tmp_path / "run"))  # fmt: skip
    return config, run(config)


def _files(folder) -> dict[str, tuple[bytes, int]]:
    """Every file in ``folder`` (and below): its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _says_finished(printed, out) -> None:
    assert printed.err == "" and printed.out.count("\n") == 1, printed
    assert printed.out.startswith(f"ppma train: resume: {out / 'last.pth'} already finished its 1 epochs, ")
    assert f"give a larger --epochs: ppma train --resume {out} --epochs M, M > 1" in printed.out


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys):
    """ppma train --resume RUN on a run that trained all its epochs printed "resumed at epoch 2 ..." and did
    nothing (rewriting config.yaml, the log, the curves); now one line on how to train more, exit 0."""
    from ppma.cli import main

    config, _ = _finished_run(tmp_path)
    out = tmp_path / "run"
    capsys.readouterr()
    before = _files(out)
    for argv in (["--resume", str(out)], ["--resume", "auto", "--output-dir", str(out)]):
        assert main(["train", *argv]) == 0
        _says_finished(capsys.readouterr(), out)
        assert _files(out) == before


def test_the_api_resuming_a_finished_run_writes_nothing_and_returns_its_summary(tmp_path, capsys):
    """ppma.train.run(config) resuming a run that trained all its epochs rewrote config.yaml, the log and the
    curves (only the CLI checked); it now says so in the same line, writes nothing and returns the summary."""
    config, summary = _finished_run(tmp_path)
    out = tmp_path / "run"
    capsys.readouterr()
    before = _files(out)
    again = run(config.replace(resume=""))
    _says_finished(capsys.readouterr(), out)
    assert _files(out) == before
    assert summary["already_finished"] is None and again["already_finished"].startswith("resume: ")
    assert {k: v for k, v in again.items() if k != "already_finished"} == {
        k: v for k, v in summary.items() if k != "already_finished"}  # fmt: skip


def test_a_run_resumed_into_another_folder_starts_with_its_best_checkpoint(tmp_path):
    """The old folder's best.pth is copied whole, with the umask's mode like every checkpoint (the copy was
    mkstemp's 0600, unreadable to the others who can read last.pth); an existing best.pth is kept."""
    import os

    from ppma.train.engine import _carry_best

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    best = os.urandom(4096)
    (old / "best.pth").write_bytes(best)
    (old / "last.pth").write_bytes(os.urandom(64))
    _carry_best(old / "last.pth", new)
    assert (new / "best.pth").read_bytes() == best
    umask = os.umask(0)
    os.umask(umask)
    assert (new / "best.pth").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in new.iterdir()] == ["best.pth"]  # no temporary file left
    (old / "best.pth").write_bytes(os.urandom(16))
    _carry_best(old / "last.pth", new)  # the new folder's own best.pth wins
    assert (new / "best.pth").read_bytes() == best


def test_a_resumed_epochs_progress_bar_starts_where_it_stopped(tmp_path, capsys):
    """The bar of an epoch resumed after 2 of its 6 steps counted 0/4 (the batches left); now 2/6 on."""
    root = make_image_folder(tmp_path / "data", classes=3, train=8, val=2, size=(32, 32))
    config = TrainConfig(data_path=str(root), model="ppma_nano", input_size=32, batch_size=4, epochs=1, lr=1e-3,
                         warmup_epochs=0, workers=0, plot=False, output_dir=str(tmp_path / "r"))  # fmt: skip
    run(config.replace(save_every_steps=2, stop_after_steps=3))
    capsys.readouterr()
    run(config.replace(resume="", progress=True))
    bar = capsys.readouterr().err
    assert "epoch 1/1" in bar and "2/6 [" in bar and "6/6 [" in bar and "/4 [" not in bar
