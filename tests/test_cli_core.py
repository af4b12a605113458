"""The core sub-commands: info, backends, and the one-line error contract."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ppma.cli import main


def test_info_prints_parameters_and_gflops(capsys):
    assert main(["info", "ppma_tiny", "--size", "224"]) == 0
    out = capsys.readouterr().out
    assert "14.335 M" in out
    assert "GFLOPs      2.71" in out


def test_info_counts_the_model_timm_builds_by_default(capsys):
    # ppma_nano's registry entry has 10 classes; info used to build it with 1000 (3.454 M, not 2.440 M)
    import timm

    model = timm.create_model("ppma_nano")
    expected = sum(p.numel() for p in model.parameters())
    assert main(["info", "ppma_nano", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert f"parameters  {expected / 1e6:.3f} M" in out and f"classes     {model.num_classes}" in out
    assert main(["info", "ppma_nano", "--size", "32", "--num-classes", "7"]) == 0
    with_7 = sum(p.numel() for p in timm.create_model("ppma_nano", num_classes=7).parameters())
    assert f"parameters  {with_7 / 1e6:.3f} M" in capsys.readouterr().out


def test_info_non_square_size(capsys):
    assert main(["info", "ppma_nano", "--size", "64x96", "--num-classes", "10"]) == 0
    assert "64x96" in capsys.readouterr().out


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["info", "ppma_huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppma info: error: model: unknown name 'ppma_huge'")
    assert "ppma_tiny" in err and "\n" not in err


def test_missing_checkpoint_is_a_one_line_error(capsys, tmp_path):
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert "no file at" in capsys.readouterr().err


def test_backends_lists_every_backend_with_reasons(capsys):
    assert main(["backends", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FlexAttention has no backward on CPU" in out
    assert "auto ->" in out


@pytest.mark.parametrize("flags, auto, bf16, int8", [
    ({"avx2", "fma"}, "fp32", "no: bf16 needs a CPU with bf16 units", "yes (x86 int8 kernels)"),
    ({"avx2", "avx512_bf16", "amx_bf16", "amx_int8"}, "bf16", "yes", "int8_torchao"),
])  # fmt: skip
def test_backends_says_which_precisions_this_cpu_runs(capsys, monkeypatch, flags, auto, bf16, int8):
    from ppma import cpu_units, inference

    monkeypatch.setattr(cpu_units, "cpu_flags", lambda: frozenset(flags))
    assert main(["backends", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"CPU units: {', '.join(sorted(flags - {'fma'}))}" in out
    assert f"inference precision (--precision, ppma.for_inference): auto -> {auto}" in out
    inference_part, training_part = out.split("inference precision")[1].split("training amp")

    def rows(part):
        return {line.split()[0]: line.split(None, 1)[1] for line in part.splitlines() if line.startswith("  ")}

    lines, amp = rows(inference_part), rows(training_part)
    assert lines["fp32"] == "yes" and lines["bf16"].startswith(bf16)
    if int8 == "int8_torchao":  # needs the library on top of the units
        assert lines["int8"] == ("yes (torchao int8 kernels)" if inference.has_int8_library() else
                                 "no: int8 needs torchao (pip install 'ppma[int8]')")  # fmt: skip
    else:
        assert lines["int8"] == int8
    assert "training amp (--amp): auto -> none" in out  # full precision on CPU unless asked
    assert amp["bf16"] == "yes" if auto == "bf16" else amp["bf16"].startswith("no: bf16 on CPU needs bf16 units")
    assert amp["fp16"].startswith("no: fp16 on CPU needs fp16 units")


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "ppma.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "info" in result.stdout


@pytest.mark.parametrize("size", ["0", "12x", "axb"])
def test_bad_size_is_rejected_by_the_parser(size):
    with pytest.raises(SystemExit):
        main(["info", "ppma_nano", "--size", size])


@pytest.mark.parametrize("argv, typo", [
    (["train", "--epoch", "3"], "--epoch"),
    (["eval", "--check", "x.pth"], "--check"),
    (["detect", "train", "--outp", "o"], "--outp"),
    (["viz", "mask", "--siz", "64"], "--siz"),
])  # fmt: skip
def test_abbreviated_flags_are_an_error(argv, typo, capsys):
    """argparse read `ppma train --epoch 3` as `--epochs 3`: a typo went unnoticed."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"unrecognized arguments: {typo}" in capsys.readouterr().err


@pytest.mark.parametrize("cpus, flag, want", [(1, [], 1), (2, [], 2), (16, [], 4), (1, ["--workers", "3"], 3),
                                              (16, ["--workers", "0"], 0)])  # fmt: skip
def test_eval_default_workers_are_capped_at_the_available_cpus(cpus, flag, want, monkeypatch, capsys):
    """ppma eval's default --workers 4 made torch warn (many lines) on a machine with fewer CPUs; a given
    value is kept."""
    from conftest import PUBLISHED_MICRO

    from ppma.train import data, engine

    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    used = []

    def make_loader(dataset, sampler, batch_size, workers, *args, **kwargs):
        used.append(workers)
        raise ValueError("stop here")

    monkeypatch.setattr(engine, "make_loader", make_loader)
    assert main(["eval", "--checkpoint", str(PUBLISHED_MICRO), "--model", "ppma_micro_fixture", "--device", "cpu",
                 *flag]) == 2  # fmt: skip
    assert "stop here" in capsys.readouterr().err and used == [want]
    assert data.default_workers() == min(4, cpus) and data.available_cpus() == cpus


def test_available_cpus_falls_back_to_the_cpu_count(monkeypatch):
    import os

    from ppma.train import data

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert data.available_cpus() == 3 and data.default_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert data.available_cpus() == 1
