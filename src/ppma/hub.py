"""Published weights by name: ``ppma_tiny.in1k`` -> the file in the Hugging Face cache.

timm loads them itself (``timm.create_model("ppma_tiny.in1k", pretrained=True)``: the pretrained
configs in ``ppma.models.ppma`` name the hub repository and file). This module serves the commands
that take a checkpoint file (``ppma predict|eval|viz --model ppma_tiny.in1k --pretrained``, the dense
``--pretrained ppma_tiny.in1k``) and turns a failed download into one line that says where the
weights come from and how to pass a local copy instead; a file in the cache that cannot be read (an
interrupted download), into one that says how to fetch it again (``reading_hub_file``, also used by
timm's loading in ``PPMA.load_pretrained``).

The cache is huggingface_hub's (``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads it only).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["published_names", "hub_source", "pretrained_file", "weights_unavailable", "is_hub_failure",
           "damaged_download", "reading_hub_file"]  # fmt: skip


def published_names() -> list[str]:
    """The ``model.tag`` names with downloadable weights, e.g. ``ppma_tiny.in1k``."""
    import timm

    import ppma  # noqa: F401  (registers the models)

    return sorted(timm.list_pretrained("ppma_*"))


def hub_source(name: str) -> tuple[str, str, str]:
    """``(architecture, hub repository, file in it)`` of a published name; the bare name picks the default tag."""
    import timm

    import ppma  # noqa: F401

    cfg = timm.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name) else None
    if cfg is None or not cfg.hf_hub_id or not cfg.hf_hub_filename:
        names = ", ".join(published_names())
        raise ValueError(f"model: {name!r} has no published weights; names with weights: {names}")
    return cfg.architecture or name.split(".")[0], cfg.hf_hub_id, cfg.hf_hub_filename


def weights_unavailable(name: str, hub_id: str, filename: str, cause: BaseException) -> FileNotFoundError:
    """One line: what failed, where the weights come from, how to use a local copy."""
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    arch = name.split(".")[0]
    return FileNotFoundError(
        f"pretrained weights of {name}: cannot get {filename} from the Hugging Face Hub repository {hub_id} "
        f"({type(cause).__name__}: {reason[:160]}); download it there (with network, or into HF_HOME for "
        f"HF_HUB_OFFLINE=1) or pass a local copy: --checkpoint FILE, or timm.create_model('{arch}', "
        f"pretrained=True, pretrained_cfg_overlay=dict(file=FILE))"
    )


def damaged_download(cause: BaseException, hub_id: str, filename: str) -> ValueError:
    """One line: ``cause`` (the cached file could not be read) and how to fetch the file again. A damaged or
    interrupted download stays in the cache and fails every later load the same way."""
    return ValueError(
        f"{cause}; a damaged download in the Hugging Face cache? fetch it again: huggingface_hub."
        f"hf_hub_download({hub_id!r}, {filename!r}, force_download=True)"
    )


@contextlib.contextmanager
def reading_hub_file(path: str | os.PathLike, hub_id: str, filename: str) -> Iterator[None]:
    """Within: a failed read of ``path`` (``ppma.checkpoint.CheckpointReadError``), the file ``filename``
    of the hub repository ``hub_id`` in the Hugging Face cache, raises ``damaged_download``. Failures of
    other files, and every other error, pass unchanged."""
    from .checkpoint import CheckpointReadError

    try:
        yield
    except CheckpointReadError as e:
        if not _same_file(e.path, Path(path)):
            raise
        raise damaged_download(e, hub_id, filename) from e


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


def is_hub_failure(e: BaseException) -> bool:
    """A download or cache failure of huggingface_hub (not a problem inside the file itself)."""
    from huggingface_hub import errors

    return isinstance(e, (errors.HfHubHTTPError, errors.EntryNotFoundError, errors.OfflineModeIsEnabled,
                          ConnectionError, TimeoutError))  # fmt: skip


def pretrained_file(name: str) -> Path:
    """The local path of a published name's weights, downloaded into the Hugging Face cache if needed."""
    from huggingface_hub import hf_hub_download

    _, hub_id, filename = hub_source(name)
    try:
        return Path(hf_hub_download(hub_id, filename))
    except Exception as e:
        if is_hub_failure(e):
            raise weights_unavailable(name, hub_id, filename, e) from e
        raise
