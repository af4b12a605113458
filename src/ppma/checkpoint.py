"""Read, convert and write checkpoints: published ``.pth`` files, ours (``.pth`` / ``.safetensors``).

Loading never executes code from a file: ``torch.load(weights_only=True)`` with only
``argparse.Namespace`` (the published training scripts store their ``args``) allowed beyond tensors.
Writes go to a temporary file in the same folder and are renamed into place, so a crash never
leaves a half-written checkpoint; the file gets the mode the umask gives (0644 usually), not the
temporary file's 0600.

**The model card.** A checkpoint is used correctly only with its model name, classes and evaluation
transform (a digits model fell from 97.8 % to 61 % top-1 when evaluated with ImageNet's). Every
file ppma writes carries them: ``model_card(config, classes)`` makes the card, ``.pth`` files hold its
keys at the top level, ``.safetensors`` files in their metadata (``card_metadata``, the same string
keys ``ppma export`` writes), and ``read_card`` reads any of them back, also from training checkpoints
written before cards (their ``config``). Files without a card (published, foreign) get ``None`` fields.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .models.published import checkpoint_filter_fn

_logger = logging.getLogger(__name__)

__all__ = ["TRANSFORM_KEYS", "CheckpointReadError", "atomic_copy", "atomic_save", "atomic_write", "atomic_write_text",
           "card_metadata", "convert", "extract_state_dict", "load_into", "model_card", "read_card",
           "read_checkpoint"]  # fmt: skip

# Where the weights sit in the files we know: ours and the published training scripts' ('models' in
# some periodic backups), and the dense-task checkpoints ('state_dict' with 'backbone.*' keys).
_WEIGHT_KEYS = ("model", "models", "state_dict")


# The evaluation transform: what a model needs besides its weights to see images as it was trained to.
TRANSFORM_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std")
# The string keys of a card in safetensors metadata (values JSON where not plain strings).
_CARD_JSON_KEYS = ("classes", "transform", "model_kwargs")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class CheckpointReadError(ValueError):
    """``read_checkpoint`` could not read ``path`` (empty, truncated, unsafe, not a dict of weights): one line.

    A ``ValueError``; ``.path`` lets a caller that knows where the file came from (``ppma.hub``: the
    Hugging Face cache) say what to do about it."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.path = Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The dict stored in ``path`` (``.pth`` / ``.pt``); for ``.safetensors`` ``{"model": tensors}`` plus
    the model card of its metadata (``read_card`` keys), where it has one.

    Raises a one-line ``CheckpointReadError`` (a ``ValueError``) for an empty, truncated or unsafe file, or
    one that holds something other than a dict (a list, a bare tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"checkpoint: {path} is empty (0 bytes)", path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated, or not a torch checkpoint
        raise CheckpointReadError(_unreadable(path, e), path) from e
    if not isinstance(ckpt, dict):
        raise CheckpointReadError(f"checkpoint: {path} holds a {type(ckpt).__name__}, not a dict of weights", path)
    return ckpt


# How a torch file starts: a zip archive (torch.save since 1.6), or the legacy format's pickled magic number.
_ZIP_START = b"PK\x03\x04"
_LEGACY_MAGIC = b"l\xfc\x9cF\xf9 j\xa8P\x19"


def _unreadable(path: Path, e: BaseException) -> str:
    """One line on why torch.load(weights_only=True) failed on ``path``: not a PyTorch checkpoint, truncated
    or damaged, or holding objects that are refused. Never torch's advice to retry with
    ``weights_only=False``, which would run code from the file (unsafe advice for a downloaded file)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not (head.startswith(_ZIP_START) or _LEGACY_MAGIC in head):
        return (f"checkpoint: cannot read {path}: not a PyTorch checkpoint (neither a zip archive nor torch's "
                f"legacy format; it starts with {head[:12]!r})")  # fmt: skip
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"checkpoint: cannot read {path} safely: it holds {refused.group(1)}, which is not a tensor, number "
                "or container of them (loading it could run code from the file; refused)")  # fmt: skip
    detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else ""  # torch's first sentence, not its boilerplate
    reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
    return f"checkpoint: cannot read {path}: truncated or damaged ({reason[:200]})"


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (a safe_open handle, not a dict)
    except Exception as e:  # SafetensorError: truncated header or data, not a safetensors file
        raise CheckpointReadError(f"checkpoint: cannot read {path} as safetensors ({_first_line(e)})", path) from e
    card: dict[str, Any] = {}
    for key in ("model_name", "weights", *_CARD_JSON_KEYS):
        if key in metadata:
            try:
                card[key] = json.loads(metadata[key]) if key in _CARD_JSON_KEYS else metadata[key]
            except json.JSONDecodeError:
                raise CheckpointReadError(f"checkpoint: {path}: metadata {key!r} is not JSON: {metadata[key][:60]!r}",
                                          path) from None
    return {"model": state, **card}


def model_card(config: Any, classes: list[str] | None, model_name: str | None = None) -> dict[str, Any]:
    """What a file needs to be used correctly: ``model_name``, ``model_kwargs``, ``classes``, ``transform``.

    Args:
        config: a ``TrainConfig`` (or a dict of its fields): ``model``, ``model_kwargs`` and the transform
            fields (``TRANSFORM_KEYS``).
        classes: class names in label order (None: unknown).
        model_name: overrides ``config.model``.
    """
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    return {"model_name": model_name or get("model"), "model_kwargs": dict(get("model_kwargs") or {}),
            "classes": list(classes) if classes is not None else None,
            "transform": _plain_transform({k: get(k) for k in TRANSFORM_KEYS})}  # fmt: skip


def _plain_transform(t: dict[str, Any]) -> dict[str, Any]:
    """The transform in one form (ints, floats, lists), whichever file or config it came from."""
    try:
        return dict(input_size=int(t["input_size"]), crop_pct=float(t["crop_pct"]),
                    interpolation=str(t["interpolation"]), mean=[float(v) for v in t["mean"]],
                    std=[float(v) for v in t["std"]])  # fmt: skip
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint: its evaluation transform is malformed ({_first_line(e)}): {t}") from None


def card_metadata(card: dict[str, Any]) -> dict[str, str]:
    """A card as safetensors metadata (strings only; absent fields left out)."""
    meta = {"format": "pt"}
    for key, value in card.items():
        if value is None or key not in ("model_name", "weights", *_CARD_JSON_KEYS):
            continue
        meta[key] = json.dumps(value) if key in _CARD_JSON_KEYS else str(value)
    return meta


def read_card(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The card of a checkpoint dict: ``model_name``, ``model_kwargs``, ``classes``, ``transform``, each
    None (``model_kwargs``: {}) where the file does not say.

    Sources, first found wins: the card's own keys (ours, any format); the ``config`` of a training
    checkpoint written before cards; the model name in a published file's ``args``.
    """
    import timm

    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    transform = checkpoint.get("transform")
    if not isinstance(transform, dict) and all(k in config for k in TRANSFORM_KEYS):
        transform = {k: config[k] for k in TRANSFORM_KEYS}
    if isinstance(transform, dict):
        missing = [k for k in TRANSFORM_KEYS if k not in transform]
        if missing:
            raise ValueError(f"checkpoint: its evaluation transform lacks {', '.join(missing)}")
        transform = _plain_transform(transform)
    else:
        transform = None
    published = getattr(checkpoint.get("args"), "model", None)  # the published scripts' argparse.Namespace
    if not (isinstance(published, str) and timm.is_model(published)):
        published = None
    name = checkpoint.get("model_name") or published
    classes = checkpoint.get("classes")
    return {"model_name": name if isinstance(name, str) else None,
            "model_kwargs": dict(checkpoint.get("model_kwargs") or config.get("model_kwargs") or {}),
            "classes": [str(c) for c in classes] if isinstance(classes, list | tuple) and classes else None,
            "transform": transform}  # fmt: skip


def extract_state_dict(checkpoint: dict[str, Any], use_ema: bool | str = False) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint dict; ``use_ema`` picks ``model_ema`` (an error if absent),
    ``"auto"`` the EMA where the file has one."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint: holds a {type(checkpoint).__name__}, not a dict of weights")
    if use_ema == "auto":
        use_ema = isinstance(checkpoint.get("model_ema"), dict)
    if use_ema and checkpoint.get("weights") == "ema" and "model_ema" not in checkpoint:
        use_ema = False  # a file converted with --ema: its "model" holds the EMA weights (the card says so)
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
        # ours (``ppma detect|segment train``): the PPMA sits in timm's features wrapper (``model.``), under
        # Mask R-CNN's FPN module (``body.``); published MMDetection / MMSegmentation files have neither
        for inner in ("body.model.", "model."):
            if any(k.startswith(inner) for k in state):
                state = {k[len(inner) :]: v for k, v in state.items() if k.startswith(inner)}
                break
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint: entries that are not tensors: {bad[:5]}")
    if not state:
        raise ValueError("checkpoint: holds no weights")
    return state


def load_into(
    model: nn.Module,
    path: str | os.PathLike,
    use_ema: bool | str = False,
    *,
    contents: dict[str, Any] | None = None,
    adapt_in_chans: bool = False,
) -> int | None:
    """Load a checkpoint into a PPMA model, strictly.

    Published and our key names both work. Tolerated, with the model's own initial values kept:
    a classifier whose class count differs (fine-tuning), the dense-task LayerNorms when loading a
    classification checkpoint, and the classifier head when loading a dense-task backbone. The file's
    classifier is left out for a model without one (``num_classes=0``).
    Anything else missing, unexpected or of another shape raises a ``ValueError`` listing the keys.

    ``contents``: the dict already read from ``path`` (``read_checkpoint``), so a caller that read the
    card first does not read the file again; ``path`` then only names it in messages.

    ``adapt_in_chans``: a stem for another channel count is adapted as timm adapts pretrained weights
    (``timm.models.adapt_input_conv``: summed for 1 channel, repeated and rescaled for others) instead of
    failing; the ``pretrained=True`` path (``in_chans=1`` from RGB weights) sets it.

    Returns the file's class count when the model kept its own classifier for another count, else None.
    """
    ckpt = read_checkpoint(path) if contents is None else contents
    state = checkpoint_filter_fn(extract_state_dict(ckpt, use_ema), model)
    own = model.state_dict()
    stem = "stem.0.weight"
    if adapt_in_chans and stem in state and stem in own and state[stem].shape[1] != own[stem].shape[1]:
        from timm.models import adapt_input_conv

        file_chans, model_chans = state[stem].shape[1], own[stem].shape[1]
        state[stem] = adapt_input_conv(model_chans, state[stem], base_chans=file_chans)
        _logger.info(f"Converted input conv stem.0 pretrained weights from {file_chans} to {model_chans} channel(s)")
    if "head.fc.weight" not in own:  # num_classes=0 (timm's feature extractor): the file's classifier is unused
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
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
    other_classes = None
    if wrong_shape and all(s.startswith("head.fc.") for s in wrong_shape):
        other_classes = int(state["head.fc.weight"].shape[0]) if "head.fc.weight" in state else None
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
    return other_classes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """``write(tmp_path)`` to a temporary file beside ``path``, flushed to disk, given the umask's mode
    (mkstemp makes it 0600), then renamed onto ``path``: a crash leaves the old file or none. The temporary
    name does not end in ``path``'s suffix: writers that pick a format by suffix must be told it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: the old file survives a crash."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` written to ``path`` as ``atomic_save`` writes a checkpoint: a reader (or a crash) sees the old
    file or the whole new one, never half of it. Every JSON or text result the package writes goes through it
    (``--json`` files, a run's config and restarted log, the ablation table, the example data sets' JSON)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``src`` copied to ``dst`` as ``atomic_save`` writes a checkpoint (whole or not at all, the umask's mode)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def convert(src: str | os.PathLike, dst: str | os.PathLike, use_ema: bool = False, force: bool = False) -> int:
    """Write the weights of ``src`` (published or ours) with our key names to ``dst`` (.safetensors or .pth),
    with the model card of ``src`` (``.safetensors``: in its metadata) where ``src`` has one.

    Refuses (``ValueError``) to write onto ``src`` itself, or onto an existing file unless ``force``.
    Returns the number of tensors written.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix not in (".safetensors", ".pth", ".pt"):
        raise ValueError(f"convert: {dst}: the output must end in .safetensors, .pth or .pt")
    if src.exists() and dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"convert: {dst} is the input file; writing it would replace the checkpoint with its weights")
    if dst.exists() and not force:
        raise ValueError(f"convert: {dst} exists; pass --force (force=True) to replace it")
    if dst.exists() and not dst.is_file():
        raise ValueError(f"convert: {dst} is not a file")
    ckpt = read_checkpoint(src)
    state = checkpoint_filter_fn(extract_state_dict(ckpt, use_ema))
    state = {k: v.contiguous() for k, v in state.items()}
    card = {k: v for k, v in read_card(ckpt).items() if v}
    if "head.fc.weight" not in state:  # a backbone (dense-task file): its classes are not these weights' outputs
        card.pop("classes", None)
    if "model_name" in card:  # a file of weights only: say which of the source's it holds
        card["weights"] = "ema" if use_ema else "model"
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {**card_metadata(card), "source": src.name}
        atomic_write(dst, lambda tmp: save_file(state, tmp, metadata=metadata))
    else:
        atomic_save({"model": state, **card}, dst)
    return len(state)
