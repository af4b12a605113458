"""torchrun with 2 processes on CPU (Gloo): sharded data, metrics summed over ranks, only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from imagefolder import make_image_folder, one_thread  # noqa: F401  (one_thread: autouse fixture)

from ppma.checkpoint import read_checkpoint
from ppma.train import evaluate_checkpoint


def test_torchrun_two_cpu_processes_train_and_reduce_metrics(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, train=8, val=3, size=(32, 36))  # 24 train, 9 val
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ppma.cli",
           "train", "--data-path", str(root), "--model", "ppma_nano", "--input-size", "32", "--batch-size", "4",
           "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--workers", "0",
           "--output-dir", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ppma train: ppma_nano") == 1  # only rank 0 prints
    assert "2 process(es)" in proc.stdout

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 1  # one writer
    (record,) = records
    # DistributedSampler: 12 images per rank, 3 steps of 4 on each; the counts are sums over both ranks
    assert record["step"] == 3 and record["train_images"] == 24 and record["val_images"] == 9
    assert read_checkpoint(out / "last.pth")["resolved"]["total_batch"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "config.yaml", "curves.png",
                                                                         "last.pth", "log.jsonl"]  # fmt: skip
    assert not (out / ".lock").exists()  # the run folder's lock (ppma.runtime.RunFolder) is removed when the run ends
    # evaluation was reduced exactly: one process on the whole val set gives the logged numbers
    single = evaluate_checkpoint(out / "last.pth", str(root), weights="model", workers=0)
    assert single["top1"] == pytest.approx(record["top1"]) and single["loss"] == pytest.approx(record["loss"], rel=1e-5)


def test_a_two_process_run_resumed_by_one_process_trains_the_rest_of_the_epoch(tmp_path):
    """Stopped after one step of 2 processes x 4 images (8 of 24 trained), resumed by one process: it trains
    the 16 untrained images (4 steps of 4) and logs the epoch whole. It used to skip 4 (one process's share)
    of a reshuffled order: 5 steps, 4 images trained twice and others not at all in that epoch."""
    root = make_image_folder(tmp_path / "data", classes=3, train=8, val=3, size=(32, 32))  # 24 train
    out = tmp_path / "run"
    args = ["train", "--data-path", str(root), "--model", "ppma_nano", "--input-size", "32", "--batch-size", "4",
            "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-3", "--workers", "0", "--no-plot",
            "--output-dir", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ppma.cli",
           *args, "--save-every-steps", "1", "--stop-after-steps", "2"]  # saved at 1  # fmt: skip
    proc = subprocess.run(two, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert read_checkpoint(out / "last.pth")["progress"]["step"] == 1
    one = [sys.executable, "-m", "ppma.cli", *args, "--resume"]
    proc = subprocess.run(one, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "saved with 2 processes, now 1" in proc.stdout
    assert read_checkpoint(out / "last.pth")["progress"]["step"] == 1 + 16 // 4
    # the epoch's sums were saved over both processes (rank 0's share alone used to be saved: 4 + 16 logged)
    (record,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert record["train_images"] == 24
