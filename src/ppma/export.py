"""Hand a trained model over: timm's hub format, ONNX, ``torch.export``.

- ``export_timm(checkpoint, DIR)``: ``config.json`` + ``model.safetensors`` as ``timm.create_model("local-dir:DIR")``
  and ``timm.models.push_to_hf_hub`` use them (architecture, classes, label names, the evaluation transform).
- ``export_onnx(checkpoint, "model.onnx", size=224, dynamic_batch=..., dynamic_size=...)``: a graph for ONNX
  Runtime (torch's dynamo exporter), checked against eager on a random batch before it is kept.
- ``export_program(model, example, dynamic_batch=True)``: a ``torch.export.ExportedProgram``.

Exports use the ``reference`` attention backend: plain tensor ops (masks from cumulative sums, two
softmaxes) that trace for any token grid. The ``cpu`` backend splits work by a byte budget computed from
the grid size, a Python-level decision that fixes the grid at export time; ``flex`` and ``triton`` are not
ONNX ops. With ``dynamic_size`` the height and width are multiples of 32 (the network's stride), which
keeps every stage's grid an exact half of the previous one for the exporter's shape reasoning.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._checks import check_output_path
from .checkpoint import _umask

__all__ = ["EXPORT_BACKEND", "load_classifier", "export_timm", "export_onnx", "export_program", "run_onnx"]

EXPORT_BACKEND = "reference"
_STRIDE = 32
_MAX_SIDE = 2048  # the largest height / width a dynamic-size graph is declared for
# ONNX Runtime against eager, both float32, relative to the largest logit: rounding gives about 1e-6
_ONNX_RTOL = 1e-3


def load_classifier(
    checkpoint: str | os.PathLike, model_name: str | None = None, weights: str = "auto"
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a classification checkpoint (ours or published), in eval mode, and what it carries:
    ``model_name``, ``model_kwargs``, ``classes`` (or None), ``weights`` (which weights these are: an export of
    an export says the EMA its file holds) and the evaluation ``transform``."""
    from .checkpoint import extract_state_dict, read_checkpoint
    from .train.engine import _classifier_spec

    raw = read_checkpoint(checkpoint)  # refuses anything but a dict
    if not raw:
        raise ValueError(f"checkpoint: {checkpoint} holds an empty dict, not a model's weights")
    extract_state_dict(raw)  # weights that are not tensors: one line here, not deep in the model build
    if not (model_name or raw.get("model_name") or getattr(raw.get("args"), "model", None)):
        raise ValueError(f"model: {checkpoint} does not name its model; pass --model (e.g. ppma_tiny)")
    spec = _classifier_spec(checkpoint, model_name, weights, None, None, contents=raw)  # the file read once
    model = spec.build()
    c = spec.config
    transform = dict(input_size=int(c.input_size), crop_pct=float(c.crop_pct), interpolation=str(c.interpolation),
                     mean=tuple(float(v) for v in c.mean), std=tuple(float(v) for v in c.std))  # fmt: skip
    info = dict(model_name=spec.model_name.split(".")[0], model_kwargs=dict(spec.model_kwargs), classes=spec.classes,
                weights=spec.weights_label, transform=transform)  # fmt: skip
    return model, info


def _check_writable(path: Path, force: bool, is_dir: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written (or exists and ``force`` is off)."""
    if path.exists():
        if path.is_dir() != is_dir:
            raise ValueError(
                f"output: {path} is a {'file' if is_dir else 'folder'}; expected a {'folder' if is_dir else 'file'}"
            )
        if (not is_dir or any(path.iterdir())) and not force:
            raise ValueError(f"output: {path} exists; pass --force (force=True) to replace it")
    check_output_path(path, "output")


def _safetensors_metadata(info: dict[str, Any]) -> dict[str, str]:
    """What a file needs to be used correctly, as safetensors metadata (string values only)."""
    return {"format": "pt", "model_name": info["model_name"], "classes": json.dumps(info["classes"]),
            "transform": json.dumps(info["transform"]), "model_kwargs": json.dumps(info["model_kwargs"]),
            "weights": info["weights"]}  # fmt: skip


def export_timm(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_name: str | None = None,
    weights: str = "auto",
    force: bool = False,
) -> Path:
    """Write ``out_dir/config.json`` and ``out_dir/model.safetensors`` (timm's hub format).

    The folder is built beside ``out_dir`` and renamed into place: a crash leaves no half-written export.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    out_dir = Path(out_dir)
    _check_writable(out_dir, force, is_dir=True)
    model, info = load_classifier(checkpoint, model_name, weights)
    t = info["transform"]
    # The registry's config may describe the published weights (hub file, top-1): describe these instead.
    keep = ("architecture", "num_classes", "first_conv", "classifier", "pool_size", "license", "paper_ids",
            "paper_name")  # fmt: skip
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k in keep}
    model.pretrained_cfg["architecture"] = info["model_name"]
    model.pretrained_cfg.setdefault("input_size", (3, t["input_size"], t["input_size"]))
    data_config = dict(input_size=(3, t["input_size"], t["input_size"]), crop_pct=t["crop_pct"],
                       interpolation=t["interpolation"], mean=t["mean"], std=t["std"], crop_mode="center")  # fmt: skip
    model_config = {"label_names": list(info["classes"])} if info["classes"] else {}
    if not info["classes"] and model.num_classes == 1000:  # a published file: ImageNet-1K's synsets, in timm's order
        from timm.data import ImageNetInfo

        imagenet = ImageNetInfo()
        model_config = dict(label_names=list(imagenet.label_names()),
                            label_descriptions=imagenet.label_descriptions(as_dict=True))  # fmt: skip
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    umask = _umask()
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; an export is for sharing
    try:
        save_config_for_hf(model, str(tmp / "config.json"), model_config=model_config,
                           model_args=info["model_kwargs"], data_config=data_config)  # fmt: skip
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata=_safetensors_metadata(info))
        (tmp / "model.safetensors").chmod(0o666 & ~umask)  # safetensors writes 0600, unreadable to others
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(f"ONNX export needs {' and '.join(missing)}, not installed: pip install \"ppma[export]\"")


def _onnx_runtime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError('ONNX Runtime is not installed: pip install "ppma[export]" (or onnxruntime)') from e
    return onnxruntime


def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool) -> dict | None:
    from torch.export import Dim

    dims = {}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1, max=4096)
    if dynamic_size:
        dims[2] = _STRIDE * Dim("height_blocks", min=1, max=_MAX_SIDE // _STRIDE)
        dims[3] = _STRIDE * Dim("width_blocks", min=1, max=_MAX_SIDE // _STRIDE)
    return {"x": dims} if dims else None


def _check_size(size: tuple[int, int], dynamic_size: bool) -> None:
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"size: expected positive height and width, got {h}x{w}")
    if dynamic_size and (h % _STRIDE or w % _STRIDE or max(h, w) > _MAX_SIDE):
        raise ValueError(f"size: with a dynamic size the height and width are multiples of {_STRIDE} up to "
                         f"{_MAX_SIDE}, got {h}x{w}")  # fmt: skip


def _traced_shape(shape: tuple[int, ...], dynamic_batch: bool, dynamic_size: bool) -> tuple[int, ...]:
    """The input shape to trace: torch.export specialises a dynamic dimension traced at 1, so a dynamic
    batch is traced at two or more images and a dynamic side at two or more 32-pixel blocks."""
    b, c, h, w = shape
    if dynamic_batch:
        b = max(b, 2)
    if dynamic_size:
        h, w = max(h, 2 * _STRIDE), max(w, 2 * _STRIDE)
    return b, c, h, w


def export_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True, dynamic_size: bool = False):
    """``torch.export.export`` of a PPMA model (switched to the exportable backend) on ``example``.

    A dynamic dimension of ``example`` at 1 (one image; a side of 32 pixels) is traced on a random input of
    2 (64 pixels) instead. With ``dynamic_size`` the program takes sides of 64 pixels and more."""
    _check_size(tuple(example.shape[-2:]), dynamic_size)
    traced = _traced_shape(tuple(example.shape), dynamic_batch, dynamic_size)
    if traced != tuple(example.shape):
        example = torch.randn(traced, dtype=example.dtype, device=example.device)
    if hasattr(model, "set_backend"):
        model.set_backend(EXPORT_BACKEND)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch, dynamic_size))


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    size: int | tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    model_name: str | None = None,
    weights: str = "auto",
    force: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Write an ONNX graph of a checkpoint's classifier (input ``x``: normalised images, output ``logits``).

    ``size``: the export size (default: the checkpoint's evaluation size). Without ``dynamic_size`` the graph
    takes that size only; with it, any multiple of 32 up to 2048 per side. ``check``: run the graph in ONNX
    Runtime on a fresh random batch and compare with eager (float32) before the file is kept; a difference
    above 1e-3 of the largest logit is a ``ValueError`` and nothing is written.

    Returns what was written: ``path``, ``size``, ``max_abs_diff`` (when checked), the transform and classes
    (also stored in the file's ``metadata_props``).
    """
    _require_onnx()
    if check:
        _onnx_runtime()
    out = Path(out)
    _check_writable(out, force)
    model, info = load_classifier(checkpoint, model_name, weights)
    size = size or info["transform"]["input_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    _check_size(size, dynamic_size)
    model.set_backend(EXPORT_BACKEND)
    example = torch.randn(_traced_shape((1, model.in_chans, *size), dynamic_batch, dynamic_size))
    batch = example.shape[0]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["x"], output_names=["logits"],
                                    dynamic_shapes=_dynamic_shapes(dynamic_batch, dynamic_size),
                                    verbose=False)  # fmt: skip
        meta = _safetensors_metadata(info)
        meta.update(input_size=f"{size[0]}x{size[1]}", dynamic_batch=str(dynamic_batch),
                    dynamic_size=str(dynamic_size), attention_backend=EXPORT_BACKEND)  # fmt: skip
        program.model.metadata_props.update(meta)
        program.save(str(tmp))
        result = dict(path=out, size=size, classes=info["classes"], transform=info["transform"])
        if check:  # at the export size itself
            x = torch.randn(batch, model.in_chans, *size)
            with torch.inference_mode():
                want = model(x).numpy()
            got = run_onnx(tmp, x.numpy())
            result["max_abs_diff"] = diff = float(abs(got - want).max())
            limit = _ONNX_RTOL * max(1.0, float(abs(want).max()))
            if not diff <= limit:  # a graph that computes something else is not kept (NaN fails too)
                raise ValueError(f"export: ONNX Runtime's logits differ from eager by {diff:.3g} (more than "
                                 f"{limit:.3g}); the graph is wrong, {out} not written")  # fmt: skip
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def run_onnx(path: str | os.PathLike, x) -> Any:
    """Logits of an exported graph in ONNX Runtime (CPU) for a float32 array (B, 3, H, W)."""
    import numpy as np

    ort = _onnx_runtime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.asarray(x, dtype=np.float32)})[0]
