"""Every bad input is one line: a table of cases, each a command (or a Python call) and the message it must give.

To add a case, append a row to the table of its kind: ``CliCase(id, argv, match)`` where ``argv`` is a
function of the test's temporary folder (make the bad file there) returning the command's arguments, or
``PyCase(id, call, exception, match)`` for the Python API. The test checks: exit status 2, exactly one
line on stderr starting ``ppma COMMAND: error:``, the expected words in it, and no traceback.
"""

from __future__ import annotations

import contextlib
import errno
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ppma.cli import main
from ppma.errors import PPMAError
from ppma.ops import criss_cross_polyline_attention, log_mask_attention, polyline_attention
from ppma.runtime import pick_device
from ppma.train import TrainConfig, digits_config, run


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


def _text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


_HELD: list[Any] = []  # run folders a live "other run" holds until the test process ends


def _held_run_folder(path: Path) -> Path:
    """A folder locked by another live run (a lock on another open file description: refused like another process)."""
    from ppma.runtime import DistInfo, RunFolder

    folder = RunFolder(path, DistInfo()).open(resuming=False)
    for sig, previous in folder._handlers.items():  # the test process keeps its own signal handlers
        signal.signal(sig, previous)
    folder._handlers = {}
    _HELD.append(folder)
    return path


def _finished_run(path: Path, epochs_done: int = 2) -> Path:
    """A run folder whose last.pth has done ``epochs_done`` of its 2 epochs (what resuming reads before it refuses)."""
    path.mkdir(parents=True)
    torch.save({"format": 2, "task": "classify", "model_name": "ppma_nano",
                "progress": {"epoch": epochs_done, "step": 5, "step_in_epoch": 0},
                "config": {"epochs": 2, "output_dir": str(path)}}, path / "last.pth")  # fmt: skip
    return path


def _op_call(op: Callable, backend: str, B: int = 2, H: int = 3, d: int = 8, dv: int = 8,
             k_dtype: torch.dtype = torch.float32, v_dtype: torch.dtype = torch.float32) -> Callable:  # fmt: skip
    def call(tmp: Path) -> Any:
        q = torch.randn(B, 2, H, 4, d)
        k = torch.randn(B, 2, H, 4, d, dtype=k_dtype)
        v = torch.randn(B, 2, H, 4, dv, dtype=v_dtype)
        log_alpha, log_beta = -torch.rand(B, 2, H, 4), -torch.rand(B, 2, H, 4)
        return op(q, k, v, log_alpha, log_beta, backend=backend)

    return call


def _save_on_a_full_disk(tmp: Path) -> None:
    """A checkpoint write that runs out of space half-way (torch.save raising ENOSPC after some bytes)."""
    from unittest import mock

    from ppma.runtime import DistInfo, RunFolder

    folder = RunFolder(tmp / "r", DistInfo()).open(resuming=False)
    try:
        folder.save({"w": torch.randn(3)})

        def full(obj: Any, f: Any) -> None:  # half a file, then no space left (f: a path or a file object)
            with open(f, "ab") if isinstance(f, str | Path) else contextlib.nullcontext(f) as out:
                out.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        with mock.patch.object(torch, "save", full):
            folder.save({"w": torch.randn(3)})
    finally:
        folder.close()


# ---- command-line cases: commands and their arguments -------------------------------------------------------
CLI_CASES: list[CliCase] = [
    CliCase("info-unknown-model", lambda tmp: ["info", "ppma_huge"], r"model: unknown name 'ppma_huge'"),
    CliCase("eval-missing-checkpoint", lambda tmp: ["eval", "--checkpoint", str(tmp / "nope.pth")], r"nope\.pth"),
    # ---- runs (training, resuming, devices, options): add rows below ----
    CliCase("train-batch-size-1", lambda tmp: ["train", "--batch-size", "1", "--output-dir", str(tmp / "r")],
            r"batch_size: ppma_nano at 32 px cannot train on 1 image .*--batch-size 2"),
    CliCase("train-config-bad-yaml",
            lambda tmp: ["train", "--config", str(_text(tmp, "c.yaml", "epochs: [1\n lr: 3\n"))],
            r"config: .*c\.yaml is not valid YAML: .*\(line 2, column \d+\)"),
    CliCase("train-config-bad-json", lambda tmp: ["train", "--config", str(_text(tmp, "c.json", '{"epochs": 1,'))],
            r"config: .*c\.json is not valid JSON"),
    CliCase("train-config-quoted-bool", lambda tmp: ["train", "--config", str(_text(tmp, "c.yaml", "ema: 'false'\n"))],
            r"ema: expected true or false, got 'false'$"),  # a truthy string: kept the EMA on silently
    CliCase("train-config-float-epochs", lambda tmp: ["train", "--config", str(_text(tmp, "c.yaml", "epochs: 2.5\n"))],
            r"epochs: expected an integer, got 2\.5$"),
    CliCase("train-config-not-a-mapping", lambda tmp: ["train", "--config", str(_text(tmp, "c.yaml", "- 1\n"))],
            r"config: .*must hold a mapping"),
    CliCase("train-interpolation-bogus", lambda tmp: ["train", "--interpolation", "bogus"],
            r"interpolation: expected one of .*bicubic.*got 'bogus'"),
    CliCase("train-device-tpu", lambda tmp: ["train", "--device", "tpu", "--output-dir", str(tmp / "r")],
            r"device: unknown device 'tpu'"),
    CliCase("detect-train-device-tpu", lambda tmp: ["detect", "train", "--data", "builtin", "--device", "tpu",
                                                    "--output", str(tmp / "r")], r"device: unknown device 'tpu'"),
    CliCase("backends-device-tpu", lambda tmp: ["backends", "--device", "tpu"], r"device: unknown device 'tpu'"),
    CliCase("backends-device-missing-gpu", lambda tmp: ["backends", "--device", "cuda:99"],
            r"device: 'cuda:99' requested but (CUDA is not available|this machine has \d+ GPU)"),
    *([CliCase("backends-device-cuda-without-gpu", lambda tmp: ["backends", "--device", "cuda"],
               r"device: 'cuda' requested but CUDA is not available")] if not torch.cuda.is_available() else []),
    CliCase("train-folder-in-use", lambda tmp: ["train", "--output-dir", str(_held_run_folder(tmp / "r"))],
            r"output: .*r is in use by another run \(pid \d+\)"),
    *[CliCase(f"{task}-train-folder-in-use", lambda tmp, task=task: [
        task, "train", "--data", "builtin", "--output", str(_held_run_folder(tmp / "r"))],
        r"r is in use by another run") for task in ("detect", "segment")],
    CliCase("segment-train-negative-threads", lambda tmp: ["segment", "train", "--data", "builtin", "--threads", "-1",
                                                            "--output", str(tmp / "r")], r"threads: must be >= 0"),
    CliCase("train-resume-nothing", lambda tmp: ["train", "--resume", str(tmp / "none")], r"resume: nothing to resume"),
    CliCase("train-resume-finished-into-new-folder",
            lambda tmp: ["train", "--resume", str(_finished_run(tmp / "r")), "--output-dir", str(tmp / "new")],
            r"resume: .*last\.pth has finished its 2 epochs, nothing to train into .*new; give --epochs above 2"),
    CliCase("train-resume-into-another-run",
            lambda tmp: ["train", "--resume", str(_finished_run(tmp / "r", 1)), "--output-dir",
                         str(_finished_run(tmp / "other").parent / "other")],
            r"output: .*other already holds another run \(last\.pth\)"),
    CliCase("train-resume-another-model",
            lambda tmp: ["train", "--resume", str(_finished_run(tmp / "r", 1)), "--model", "ppma_tiny"],
            r"resume: .*last\.pth has model_name 'ppma_nano', this run has 'ppma_tiny'"),
    CliCase("train-model-kwargs-num-classes",  # was a TypeError traceback from timm.create_model
            lambda tmp: ["train", "--model-kwargs", '{"num_classes": 5}', "--output-dir", str(tmp / "r")],
            r"model_kwargs: num_classes is the data's class count"),
    CliCase("train-model-kwargs-unknown",  # was a TypeError traceback from the model's constructor
            lambda tmp: ["train", "--model-kwargs", '{"colour": 1}', "--output-dir", str(tmp / "r")],
            r"model_kwargs: ppma_nano cannot be built with \{'colour': 1\}: .*unexpected keyword argument 'colour'"),
    CliCase("train-model-kwargs-drop-path-twice",  # the flag silently replaced the model_kwargs value
            lambda tmp: ["train", "--model-kwargs", '{"drop_path_rate": 0.1}', "--drop-path", "0.2",
                         "--output-dir", str(tmp / "r"), "--stop-after-steps", "1"],
            r"model_kwargs: drop_path_rate 0\.1 and drop_path 0\.2 both set the stochastic depth"),

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
    CliCase("predict-input-size-0",  # was taken as "not given": the checkpoint's size, without a word
            lambda tmp: ["predict", str(_image(tmp, "a.png")), "--checkpoint",
                         str(_torch_file(tmp, "m.pth", {"model": _nano_weights()})), "--model", "ppma_nano",
                         "--input-size", "0"],
            r"input_size: must be >= 1, got 0"),
    CliCase("eval-crop-pct-0",
            lambda tmp: ["eval", "--checkpoint", str(_torch_file(tmp, "m.pth", {"model": _nano_weights()})),
                         "--model", "ppma_nano", "--crop-pct", "0"],
            r"crop_pct: must be in \(0, 1\], got 0"),
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
    CliCase("eval-another-class-count",
            lambda tmp: ["eval", "--checkpoint", str(_torch_file(tmp, "m.pth", {"model": _nano_weights()})),
                         "--model", "ppma_nano", "--data-path", str(_two_class_folder(tmp))],
            r"eval: .*m\.pth has 10 classes but the data has 2 class folders"),
]

# ---- Python API cases -----------------------------------------------------------------------------------
PY_CASES: list[PyCase] = [
    # ---- runs and ops: add rows below ----
    *[PyCase(f"{op.__name__}-{backend}-{name}", _op_call(op, backend, **change), ValueError, match)
      for op in (polyline_attention, criss_cross_polyline_attention)
      for backend in ("reference", "dense", "cpu", "flex", "auto")
      if not (backend == "flex" and op is criss_cross_polyline_attention)
      for name, change, match in (
          ("k-float64", {"k_dtype": torch.float64}, r"^k: dtype torch\.float64 does not match q dtype torch\.float32"),
          ("v-float64", {"v_dtype": torch.float64}, r"^v: dtype torch\.float64 does not match q"),
          ("zero-batch", {"B": 0}, r"^q: has a zero-size dimension, shape \(0, 2, 3, 4, 8\)"),
          ("zero-height", {"H": 0}, r"^q: has a zero-size dimension"),
          ("zero-channels", {"d": 0}, r"^q: has a zero-size dimension"),
          ("zero-value-channels", {"dv": 0}, r"^v: has a zero-size dimension"),
      )],  # fmt: skip
    PyCase("log_mask_attention-k-float64", lambda tmp: log_mask_attention(
        torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4, dtype=torch.float64), torch.randn(1, 2, 5, 4),
        [-torch.rand(5, 5)]), ValueError, r"^k: dtype torch\.float64"),
    PyCase("log_mask_attention-zero-tokens", lambda tmp: log_mask_attention(
        torch.randn(1, 2, 0, 4), torch.randn(1, 2, 0, 4), torch.randn(1, 2, 0, 4), [-torch.rand(0, 0)]),
        ValueError, r"^q: has a zero-size dimension"),
    PyCase("log_mask_attention-v-tokens", lambda tmp: log_mask_attention(
        torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 6, 4), [-torch.rand(5, 5)]),
        ValueError, r"^v: leading shape \(1, 2, 6\) does not match q's \(B, heads, N\) \(1, 2, 5\)$"),
    PyCase("run-folder-disk-full", lambda tmp: _save_on_a_full_disk(tmp), PPMAError,
           r"^checkpoint: cannot write .*last\.pth \(disk full\); the previous last\.pth is intact$"),
    PyCase("train-config-str-seed", lambda tmp: TrainConfig(seed="1"), ValueError, r"^seed: expected an integer"),
    PyCase("train-config-scalar-mean", lambda tmp: TrainConfig(mean=0.5), ValueError,
           r"^mean: expected a list of numbers, got 0\.5$"),
    PyCase("train-config-interpolation", lambda tmp: TrainConfig(interpolation="bogus"), ValueError,
           r"^interpolation: expected one of"),
    PyCase("pick-device-tpu", lambda tmp: pick_device("tpu"), ValueError, r"^device: unknown device 'tpu'"),
    PyCase("min-train-batch-refused", lambda tmp: run(digits_config(batch_size=1, output_dir=str(tmp / "r"))),
           PPMAError, r"^batch_size: ppma_nano at 32 px cannot train on 1 image"),

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


def _two_class_folder(tmp: Path) -> Path:
    """val/ant/a.png, val/bee/b.png."""
    for name in ("ant", "bee"):
        (tmp / "val" / name).mkdir(parents=True)
        _image(tmp / "val" / name, f"{name[0]}.png")
    return tmp


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_line(case: CliCase, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = case.argv(tmp_path)
    before = set(tmp_path.rglob("*"))
    status = main(argv)
    err = capsys.readouterr().err
    # a refused command leaves no empty folder behind (an unknown --model-kwargs key, found while building the
    # model, left an empty run folder)
    assert not [p for p in set(tmp_path.rglob("*")) - before if p.is_dir() and not any(p.iterdir())]
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
