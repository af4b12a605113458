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


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "ppma.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "info" in result.stdout


@pytest.mark.parametrize("size", ["0", "12x", "axb"])
def test_bad_size_is_rejected_by_the_parser(size):
    with pytest.raises(SystemExit):
        main(["info", "ppma_nano", "--size", size])
