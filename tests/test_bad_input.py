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

]

# ---- Python API cases -----------------------------------------------------------------------------------
PY_CASES: list[PyCase] = [
    # ---- runs and ops: add rows below ----

    # ---- files: add rows below ----

]


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
