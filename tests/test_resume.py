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
