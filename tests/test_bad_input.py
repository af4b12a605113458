"""Every bad input is one line: a table of cases, each a command (or a Python call) and the message it must give.

To add a case, append a row to the table of its kind: ``CliCase(id, argv, match)`` where ``argv`` is a
function of the test's temporary folder (make the bad file there) returning the command's arguments, or
``PyCase(id, call, exception, match)`` for the Python API. The test checks: exit status 2, exactly one
line on stderr starting ``ppma COMMAND: error:``, the expected words in it, and no traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ppma.cli import main


@dataclass(frozen=True)
class CliCase:
    id: str
    argv: Callable[[Path], list[str]]
    match: str  # a regular expression the error line must contain


@dataclass(frozen=True)
class PyCase:
    id: str
    call: Callable[[Path], Any]
    exception: type[BaseException]
    match: str


def _empty_file(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_bytes(b"")
    return path


# ---- command-line cases: commands and their arguments -------------------------------------------------------
CLI_CASES: list[CliCase] = [
    CliCase("info-unknown-model", lambda tmp: ["info", "ppma_huge"], r"model: unknown name 'ppma_huge'"),
    CliCase("eval-missing-checkpoint", lambda tmp: ["eval", "--checkpoint", str(tmp / "nope.pth")], r"nope\.pth"),
    # ---- runs (training, resuming, devices, options): add rows below ----

    # ---- files (checkpoints, images, folders, outputs): add rows below ----
    CliCase("eval-empty-pth", lambda tmp: ["eval", "--checkpoint", str(_empty_file(tmp, "e.pth"))],
            r"e\.pth is empty \(0 bytes\)"),
    CliCase("eval-truncated-safetensors",
            lambda tmp: ["eval", "--checkpoint", str(_safetensors_file(tmp, "t.safetensors", truncate=True))],
            r"cannot read .*t\.safetensors as safetensors"),
    CliCase("eval-pth-holding-a-list", lambda tmp: ["eval", "--checkpoint", str(_torch_file(tmp, "l.pth", [1, 2]))],
            r"l\.pth holds a list, not a dict"),
    CliCase("predict-pth-holding-a-tensor",
            lambda tmp: ["predict", str(_image(tmp, "a.png")), "--checkpoint",
                         str(_torch_file(tmp, "t.pth", _nano_weights()["head.fc.bias"]))],
            r"t\.pth holds a Tensor, not a dict"),
    CliCase("eval-weights-only-safetensors-without-model",
            lambda tmp: ["eval", "--checkpoint", str(_safetensors_file(tmp, "w.safetensors"))],
            r"does not name its model .*pass --model"),
    CliCase("predict-model-dict-without-model",
            lambda tmp: ["predict", str(_image(tmp, "a.png")), "--checkpoint",
                         str(_torch_file(tmp, "m.pth", {"model": _nano_weights()}))],
            r"m\.pth does not name its model .*pass --model"),
    CliCase("predict-only-unreadable-images",
            lambda tmp: ["predict", str(_empty_file(tmp, "bad.jpg")), "--checkpoint",
                         str(_torch_file(tmp, "m.pth", {"model": _nano_weights()})), "--model", "ppma_nano"],
            r"no readable image: .*bad\.jpg: not a readable image"),
    CliCase("predict-unwritable-json",
            lambda tmp: ["predict", str(_image(tmp, "a.png")), "--checkpoint", str(tmp / "never-read.pth"),
                         "--json", str(_file_in_the_way(tmp) / "p.json")],
            r"--json: cannot create the folder .*blocker"),
    CliCase("convert-onto-its-source",
            lambda tmp: ["convert", str(_torch_file(tmp, "b.pth", {"model": {}})), str(tmp / "b.pth"), "--force"],
            r"b\.pth is the input file"),
    CliCase("convert-onto-an-existing-file",
            lambda tmp: ["convert", str(_torch_file(tmp, "b.pth", {"model": {}})), str(_empty_file(tmp, "o.pth"))],
            r"o\.pth exists; pass --force"),
    CliCase("convert-unknown-output-format",
            lambda tmp: ["convert", str(_torch_file(tmp, "b.pth", {"model": {}})), str(tmp / "o.bin")],
            r"must end in \.safetensors, \.pth or \.pt"),
    CliCase("viz-unwritable-output",
            lambda tmp: ["viz", "mask", "-o", str(_file_in_the_way(tmp) / "m.png")], r"-o: cannot create the folder"),
    CliCase("viz-unknown-output-format", lambda tmp: ["viz", "decay", "-o", str(tmp / "d.xyz")],
            r"unknown image format '\.xyz'"),
    CliCase("viz-damaged-image",
            lambda tmp: ["viz", "attention", str(_empty_file(tmp, "x.png")), "--model", "ppma_nano"],
            r"x\.png: not a readable image"),
    CliCase("eval-class-folder-with-hidden-images-only",
            lambda tmp: ["eval", "--checkpoint", str(_torch_file(tmp, "m.pth", {"model": _nano_weights()})),
                         "--model", "ppma_nano", "--data-path", str(_folder_with_hidden_only_class(tmp))],
            r"empty class folders: bee \(no images; skipped 2 non-image files: 1 hidden, 1 \.txt\)"),
]

# ---- Python API cases -----------------------------------------------------------------------------------
PY_CASES: list[PyCase] = [
    # ---- runs and ops: add rows below ----

    # ---- files: add rows below ----
    PyCase("read-empty-checkpoint", lambda tmp: _api("checkpoint").read_checkpoint(
        _empty_file(tmp, "e.pth")), ValueError, r"e\.pth is empty"),
    PyCase("convert-onto-its-source", lambda tmp: _api("checkpoint").convert(
        _torch_file(tmp, "b.pth", {"model": {}}), tmp / "b.pth", force=True), ValueError, r"is the input file"),
    PyCase("checkpoint-without-weights", lambda tmp: _api("checkpoint").convert(
        _torch_file(tmp, "b.pth", {"model": {}}), tmp / "o.safetensors"), ValueError, r"holds no weights"),
    PyCase("predict-no-images", lambda tmp: _api("train").predict_images(tmp / "never.pth", []),
           ValueError, r"images: none given"),
]


# ---- helpers of the "files" rows (the rows call them when they run) ------------------------------------

def _api(module: str) -> Any:
    """``ppma.MODULE``, imported when a row runs."""
    import importlib

    return importlib.import_module(f"ppma.{module}")


def _nano_weights() -> dict:
    import timm

    import ppma  # noqa: F401  (registers the models)

    return timm.create_model("ppma_nano").state_dict()


def _torch_file(tmp: Path, name: str, obj: Any) -> Path:
    import torch

    torch.save(obj, tmp / name)
    return tmp / name


def _safetensors_file(tmp: Path, name: str, truncate: bool = False) -> Path:
    from safetensors.torch import save_file

    path = tmp / name
    save_file({k: v.contiguous() for k, v in _nano_weights().items()}, str(path))
    if truncate:  # a copy cut short, as an interrupted download leaves it
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _image(tmp: Path, name: str) -> Path:
    from PIL import Image

    Image.new("RGB", (20, 16), (120, 30, 200)).save(tmp / name)
    return tmp / name


def _file_in_the_way(tmp: Path) -> Path:
    """A plain file where an output folder would have to be: any output path below it is unwritable."""
    (tmp / "blocker").write_text("x")
    return tmp / "blocker"


def _folder_with_hidden_only_class(tmp: Path) -> Path:
    """val/ant/a.png, and val/bee/ with only a hidden image (.thumbs/b.png) and a text file."""
    (tmp / "val" / "bee" / ".thumbs").mkdir(parents=True)
    (tmp / "val" / "ant").mkdir()
    _image(tmp / "val" / "ant", "a.png")
    _image(tmp / "val" / "bee" / ".thumbs", "b.png")
    (tmp / "val" / "bee" / "notes.txt").write_text("x")
    return tmp


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_line(case: CliCase, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = case.argv(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"exit status {status}, stderr: {err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line, got: {err}"
    assert lines[0].startswith(f"ppma {argv[0]}: error: "), lines[0]
    assert re.search(case.match, lines[0]), f"{case.match!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", PY_CASES, ids=[c.id for c in PY_CASES])
def test_python_bad_input_names_the_problem(case: PyCase, tmp_path: Path) -> None:
    with pytest.raises(case.exception, match=case.match) as info:
        case.call(tmp_path)
    assert "\n" not in str(info.value).strip()
