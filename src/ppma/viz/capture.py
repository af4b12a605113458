"""Inputs of the pictures: the image, the model, and what each attention block saw.

``prepare_image`` resizes an image (keeping its aspect ratio) and pads it to a multiple of 32, so
every stage's token grid covers whole pixels: token (i, j) of a stage with stride s covers image
rows [i*s, (i+1)*s) and columns [j*s, (j+1)*s) of the resized image.

``capture`` runs the model once with forward pre-hooks on the attention modules named
``stages.{i}.blocks.{j}.attn``. A hook receives the block's normalised input ``x`` and the stage's
rotary tables, and recomputes q, k and the log-decays from the module's own sub-modules exactly as
``PolylineAttention.forward`` does: the model is never edited and the hooks are removed afterwards.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PPMAError
from ..layers import PolylineAttention

__all__ = [
    "SAMPLES",
    "BlockCapture",
    "Capture",
    "PreparedImage",
    "capture_blocks",
    "load_image",
    "load_model",
    "prepare_image",
    "run",
]

# Real photographs that install with scikit-image: the offline demo needs no download.
SAMPLES = ("astronaut", "chelsea", "coffee")
_ATTN_NAME = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.attn$")
_MULTIPLE = 32  # the deepest stage has stride 32: padding to it makes every grid exact
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- image ------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike | None = None, sample: str = "astronaut") -> tuple[np.ndarray, str]:
    """Read an RGB image: a JPEG/PNG file, or with no path one of scikit-image's bundled photographs.

    Args:
        path: image file; ``None`` takes ``sample``.
        sample: one of ``SAMPLES`` (used only when ``path`` is None).

    Returns:
        (h, w, 3) uint8 array and a short name for captions.
    """
    if path is None:
        if sample not in SAMPLES:
            raise ValueError(f"sample: unknown name {sample!r}; choose one of {', '.join(SAMPLES)}")
        import skimage.data

        return np.asarray(getattr(skimage.data, sample)())[..., :3], f"scikit-image '{sample}'"
    from ..images import ImageReadError, load_rgb

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: no file at {path}")
    try:
        return np.asarray(load_rgb(path)), path.name  # 16-bit and float images scaled, not clipped
    except ImageReadError as e:
        raise ValueError(f"image: cannot read {e}") from e


@dataclass
class PreparedImage:
    """An image resized for the model, and the geometry that maps image pixels to tokens.

    Attributes:
        pixels: (h, w, 3) uint8, the resized image without padding (what figures show).
        tensor: (1, 3, H, W) float32, normalised and padded to multiples of 32 (what the model sees).
        original_size: (height, width) of the image as given; queries in pixels refer to it.
        name: short description for captions.
    """

    pixels: np.ndarray
    tensor: torch.Tensor
    original_size: tuple[int, int]
    name: str

    @property
    def scale(self) -> tuple[float, float]:
        """Resized pixels per original pixel, (along y, along x): rounding makes them differ slightly."""
        return self.pixels.shape[0] / self.original_size[0], self.pixels.shape[1] / self.original_size[1]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) of the resized image in original pixel units, for ``imshow``."""
        h, w = self.original_size
        return (0.0, float(w), float(h), 0.0)

    def query_pixel(self, query: tuple[float, float]) -> tuple[float, float]:
        """A query (x, y) in original pixels (ints) or fractions of width / height (floats in [0, 1]).

        Returns:
            (x, y) in original pixels. Raises ``ValueError`` when the point is outside the image.
        """
        h, w = self.original_size
        if len(query) != 2:
            raise ValueError(f"query: expected (x, y), got {query!r}")
        out = []
        for value, size in zip(query, (w, h), strict=True):
            if isinstance(value, float):  # a fraction; 1.0 is the last pixel, not one past it
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"query: fraction {value} outside [0, 1] (image is {w}x{h} pixels, x by y)")
                out.append(min(value * size, size - 0.5))
            else:
                if not 0 <= value < size:
                    raise ValueError(f"query: ({query[0]}, {query[1]}) is outside the {w}x{h} image (x by y)")
                out.append(value + 0.5)  # the pixel's centre
        return out[0], out[1]

    def query_token(self, query: tuple[float, float], stride: int) -> tuple[int, int]:
        """The (row, column) of the token containing ``query`` on a grid of the given stride."""
        x, y = self.query_pixel(query)
        sy, sx = self.scale
        return int(y * sy // stride), int(x * sx // stride)


def prepare_image(
    image: np.ndarray,
    size: int = 224,
    mean: tuple[float, ...] = _IMAGENET_MEAN,
    std: tuple[float, ...] = _IMAGENET_STD,
    name: str = "image",
) -> PreparedImage:
    """Resize so the longer side is ``size`` (aspect kept), normalise, pad bottom/right to multiples of 32.

    Padding is zero after normalisation (the mean colour), so it carries no edges.

    Args:
        image: (h, w, 3) uint8 RGB.
        size: longer side after resizing, in pixels (>= 32).
        mean, std: per-channel normalisation (the model's ``pretrained_cfg``).
        name: description for captions.
    """
    from PIL import Image

    if size < _MULTIPLE:
        raise ValueError(f"size: at least {_MULTIPLE} pixels (the deepest stage has stride 32), got {size}")
    h, w = image.shape[:2]
    ratio = size / max(h, w)
    new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    pixels = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0  # (3, h, w)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    pad_h, pad_w = (-new_h) % _MULTIPLE, (-new_w) % _MULTIPLE
    x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
    return PreparedImage(pixels=pixels, tensor=x[None], original_size=(h, w), name=name)


# ---- model ------------------------------------------------------------------------------------------


def load_model(
    name: str | None,
    checkpoint: str | os.PathLike | None = None,
    ema: bool = False,
    *,
    contents: dict[str, Any] | None = None,
) -> nn.Module:
    """A PPMA model in eval mode, with random weights or a checkpoint (ours or published).

    Args:
        name: a registered PPMA model, e.g. ``ppma_tiny``; None: the one our checkpoint names (its
            ``model_kwargs`` too), else ``ppma_tiny``.
        checkpoint: ``.pth`` / ``.safetensors`` file, loaded strictly by ``ppma.checkpoint.load_into``
            (a different class count or a dense-task backbone is fine).
        ema: take the EMA weights of a training checkpoint.
        contents: the dict already read from ``checkpoint`` (``read_checkpoint``); None: read it here.

    The model's ``pretrained_cfg`` gets the checkpoint's normalisation (``mean``, ``std``) where it stores one.
    """
    import timm

    from ..checkpoint import load_into, read_card, read_checkpoint

    if checkpoint is not None and contents is None:
        contents = read_checkpoint(checkpoint)  # once: the card below and the weights share it
    card = read_card(contents) if checkpoint is not None else {}
    stored = card.get("model_name")
    name = name or (stored.split(".")[0] if stored else "ppma_tiny")
    names = timm.list_models("ppma_*")
    if name not in names:
        raise ValueError(f"model: unknown name {name!r}; PPMA models: {', '.join(names)}")
    model = timm.create_model(name, **((card.get("model_kwargs") or {}) if name == stored else {}))
    if checkpoint is not None:
        try:
            load_into(model, checkpoint, use_ema=ema, contents=contents)
        except ValueError as e:  # the key lists, on one line
            hint = "" if stored else " (the file names no model: pass --model)"
            raise ValueError(f"{' '.join(str(e).split())[:400]}{hint}") from e
    if card.get("transform"):
        t = card["transform"]
        model.pretrained_cfg = {**(model.pretrained_cfg or {}), "mean": tuple(t["mean"]), "std": tuple(t["std"])}
    return model.eval()


# ---- capture ----------------------------------------------------------------------------------------


@dataclass
class BlockCapture:
    """What one attention block computed on image 0 of the batch (tensors on CPU, float32).

    Attributes:
        stage, block: position in the network (0-based).
        mode: ``"full"`` or ``"criss_cross"``.
        q: (heads, H, W, d) rotated queries.
        k: (heads, H, W, d) rotated keys, already scaled by d^-0.5 (so scores are ``q k^T``).
        log_alpha, log_beta: (heads, H, W) horizontal and vertical log-decays.
        stride: image pixels (of the padded, resized image) per token.
        mask: the layer's mask kind (``ppma.masks``); the published model's is ``"polyline"``.
    """

    stage: int
    block: int
    mode: str
    q: torch.Tensor
    k: torch.Tensor
    log_alpha: torch.Tensor
    log_beta: torch.Tensor
    stride: int
    mask: str = "polyline"

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the token grid."""
        return tuple(self.log_alpha.shape[-2:])

    @property
    def heads(self) -> int:
        return self.log_alpha.shape[0]


@dataclass
class Capture:
    """One image through one model: every attention block's q, k and log-decays.

    Attributes:
        image: the prepared image.
        blocks: ``blocks[stage][block]``.
        model_name: for captions.
        weights: where the weights came from (a checkpoint name, or ``None`` for random weights).
    """

    image: PreparedImage
    blocks: list[list[BlockCapture]]
    model_name: str = "model"
    weights: str | None = None

    def block(self, stage: int, block: int) -> BlockCapture:
        """The capture of ``stages.{stage}.blocks.{block}``; negative indices count from the end."""
        if not -len(self.blocks) <= stage < len(self.blocks):
            raise ValueError(f"stage: {stage} out of range; {self.model_name} has stages 0-{len(self.blocks) - 1}")
        blocks = self.blocks[stage]
        if not -len(blocks) <= block < len(blocks):
            raise ValueError(
                f"block: {block} out of range; stage {stage % len(self.blocks)} of {self.model_name} "
                f"has blocks 0-{len(blocks) - 1}"
            )
        return blocks[block]

    def caption(self) -> str:
        """One line saying which weights made the picture."""
        if self.weights is None:
            return (f"{self.model_name} with RANDOM weights (no checkpoint): random weights say little about "
                    f"learned decays; pass a checkpoint to see them. Image: {self.image.name}")  # fmt: skip
        return f"{self.model_name}, weights {self.weights}. Image: {self.image.name}"


def _recompute(module: PolylineAttention, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]):
    """q, k and log-decays of image 0: the layer's own ``project``, what its forward passes to the op."""
    q, k, _, log_alpha, log_beta = module.project(x, rotary)
    return [t[0].detach().float().cpu() for t in (q, k, log_alpha, log_beta)]


@torch.no_grad()
def capture_blocks(model: nn.Module, image: torch.Tensor) -> list[list[dict]]:
    """Run ``model.forward_features`` on ``image`` and record every attention block's inputs.

    Args:
        model: a PPMA model (any module whose attention modules are named ``stages.{i}.blocks.{j}.attn``).
        image: (1, 3, H, W) normalised image.

    Returns:
        ``out[stage][block]`` = dict(mode, q, k, log_alpha, log_beta, stride, mask); see ``BlockCapture``.
    """
    found: dict[tuple[int, int], dict] = {}
    handles = []

    def hook_for(stage: int, block: int):
        def hook(module: PolylineAttention, args: tuple) -> None:
            x, rotary = args[0], args[1]
            q, k, log_alpha, log_beta = _recompute(module, x, rotary)
            stride = image.shape[-2] // x.shape[1]
            mask = getattr(getattr(module, "mask", None), "name", "polyline")
            found[stage, block] = {"mode": module.mode, "q": q, "k": k, "log_alpha": log_alpha,
                                   "log_beta": log_beta, "stride": stride, "mask": mask}  # fmt: skip

        return hook

    for name, module in model.named_modules():
        m = _ATTN_NAME.match(name)
        if m and isinstance(module, PolylineAttention):
            handles.append(module.register_forward_pre_hook(hook_for(int(m[1]), int(m[2]))))
    if not handles:
        raise PPMAError("model: no attention modules named stages.{i}.blocks.{j}.attn; is this a PPMA model?")
    try:
        forward = getattr(model, "forward_features", model)
        forward(image)
    finally:
        for h in handles:
            h.remove()
    stages = 1 + max(s for s, _ in found)
    return [[found[s, b] for b in range(1 + max(b for t, b in found if t == s))] for s in range(stages)]


def run(
    model: str | nn.Module | None = None,
    image: str | os.PathLike | np.ndarray | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    ema: bool | str = False,
    size: int = 224,
    sample: str = "astronaut",
    contents: dict[str, Any] | None = None,
) -> Capture:
    """Load (or take) a model and an image, and capture every attention block: the start of every picture.

    Args:
        model: a PPMA model name, or a built model (used as it is, in its current mode and device); None:
            the model our ``checkpoint`` names, else ``ppma_tiny``.
        image: an image file, an (h, w, 3) uint8 array, or ``None`` for the bundled ``sample``.
        checkpoint: weights to load into the model (ours or published); without it a model given by
            name keeps its random initial weights, and the captions say so.
        ema: take a training checkpoint's EMA weights; ``"auto"``: where it has them (as ``ppma viz``, eval and
            predict by default; the captions say which weights were drawn).
        size: longer image side fed to the model, in pixels.
        sample: scikit-image photograph used when ``image`` is None (one of ``SAMPLES``).
        contents: the dict already read from ``checkpoint`` (``read_checkpoint``), not read again; None:
            read here.
    """
    # The image first: a bad path fails before a model is built.
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image: expected an (h, w, 3) uint8 array, got {image.dtype} {image.shape}")
        pixels, image_name = image, "array"
    else:
        pixels, image_name = load_image(image, sample)
    if checkpoint is not None:
        from ..checkpoint import read_checkpoint

        contents = read_checkpoint(checkpoint) if contents is None else contents
        if ema == "auto":
            ema = isinstance(contents.get("model_ema"), dict)
    if model is None or isinstance(model, str):
        model = load_model(model, checkpoint, ema, contents=contents)
        name, weights = model.pretrained_cfg.get("architecture", type(model).__name__), None
    else:
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        weights = "as given (a model object)"
        if checkpoint is not None:
            from ..checkpoint import load_into

            load_into(model, checkpoint, use_ema=ema, contents=contents)
    if checkpoint is not None:
        weights = Path(checkpoint).name + (" (EMA)" if ema or contents.get("weights") == "ema" else "")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    prepared = prepare_image(pixels, size, cfg.get("mean", _IMAGENET_MEAN), cfg.get("std", _IMAGENET_STD),
                             image_name)  # fmt: skip
    device = next(model.parameters()).device
    raw = capture_blocks(model, prepared.tensor.to(device))
    blocks = [[BlockCapture(stage=s, block=b, **d) for b, d in enumerate(row)] for s, row in enumerate(raw)]
    return Capture(image=prepared, blocks=blocks, model_name=name, weights=weights)
