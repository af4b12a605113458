"""Read, convert and write checkpoints: published ``.pth`` files, ours (``.pth`` / ``.safetensors``).

Loading never executes code from a file: ``torch.load(weights_only=True)`` with only
``argparse.Namespace`` (the published training scripts store their ``args``) allowed beyond tensors.
Writes go to a temporary file in the same folder and are renamed into place, so a crash never
leaves a half-written checkpoint.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .models.published import checkpoint_filter_fn

__all__ = ["read_checkpoint", "extract_state_dict", "load_into", "convert", "atomic_save"]

# Where the weights sit in the files we know: ours and the published training scripts' ('models' in
# some periodic backups), and the dense-task checkpoints ('state_dict' with 'backbone.*' keys).
_WEIGHT_KEYS = ("model", "models", "state_dict")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict stored in ``path`` (``.pth`` / ``.pt`` / ``.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or the file is not a torch checkpoint
        raise ValueError(f"checkpoint: cannot read {path} safely ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def extract_state_dict(checkpoint: dict[str, Any], use_ema: bool | str = False) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint dict; ``use_ema`` picks ``model_ema`` (an error if absent),
    ``"auto"`` the EMA where the file has one."""
    if use_ema == "auto":
        use_ema = isinstance(checkpoint.get("model_ema"), dict)
    if use_ema:
        if not isinstance(checkpoint.get("model_ema"), dict):
            raise ValueError(
                f"checkpoint: EMA weights requested but there is no 'model_ema' (keys: {sorted(checkpoint)})"
            )
        state = checkpoint["model_ema"]
    else:
        state = next((checkpoint[k] for k in _WEIGHT_KEYS if isinstance(checkpoint.get(k), dict)), checkpoint)
    if any(k.startswith("backbone.") for k in state):  # dense-task checkpoint: keep the backbone only
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint: entries that are not tensors: {bad[:5]}")
    return state


def load_into(model: nn.Module, path: str | os.PathLike, use_ema: bool | str = False) -> None:
    """Load a checkpoint into a PPMA model, strictly.

    Published and our key names both work. Tolerated, with the model's own initial values kept:
    a classifier whose class count differs (fine-tuning), the dense-task LayerNorms when loading a
    classification checkpoint, and the classifier head when loading a dense-task backbone.
    Anything else missing, unexpected or of another shape raises a ``ValueError`` listing the keys.
    """
    state = checkpoint_filter_fn(extract_state_dict(read_checkpoint(path), use_ema), model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    source_has_head = any(k.startswith("head.") for k in state)
    source_has_norms = any(k.startswith("norms.") for k in state)
    tolerated = {
        k for k in missing
        if (k.startswith("norms.") and not source_has_norms) or (k.startswith("head.") and not source_has_head)
    }  # fmt: skip
    if wrong_shape and all(s.startswith("head.fc.") for s in wrong_shape):
        tolerated |= {k for k in own if k.startswith("head.fc.")}  # another class count: keep our new classifier
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
        wrong_shape = []
    missing = [k for k in missing if k not in tolerated]
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint {path} does not fit {type(model).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=False)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: the old file survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert(src: str | os.PathLike, dst: str | os.PathLike, use_ema: bool = False) -> int:
    """Write the weights of ``src`` (published or ours) with our key names to ``dst`` (.safetensors or .pth).

    Returns the number of tensors written.
    """
    state = checkpoint_filter_fn(extract_state_dict(read_checkpoint(src), use_ema))
    state = {k: v.contiguous() for k, v in state.items()}
    dst = Path(dst)
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        save_file(state, str(tmp), metadata={"format": "pt", "source": Path(src).name})
        os.replace(tmp, dst)
    else:
        atomic_save({"model": state}, dst)
    return len(state)
