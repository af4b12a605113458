"""``TrainConfig``: every training option in one typed dataclass, loadable from YAML/JSON and flags.

The defaults are the published ImageNet-1K recipe (SPEC section 8). ``digits_config()`` gives the
CPU recipe for the built-in digits dataset (the README's main job, also in ``configs/digits_nano.yaml``).
Command-line flags are generated from the fields (``add_config_flags``), so the dataclass is the
one source of truth for names, types, defaults and help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DIGITS_RECIPE", "TrainConfig", "add_config_flags", "config_from_args", "digits_config", "load_config_file"]

_AMP = ("auto", "none", "bf16", "fp16")


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (the flag's help)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Options of ``ppma.train.run``; defaults reproduce the published ImageNet-1K recipe (SPEC section 8)."""

    # ---- model
    model: str = _f("ppma_tiny", "timm model name")
    model_kwargs: dict = _f({}, "more timm.create_model arguments, as JSON (e.g. '{\"mask\": \"rmt\"}')")
    drop_path: float | None = _f(None, "stochastic depth rate; none = the variant's published rate")
    initial_checkpoint: str | None = _f(None, "start from these weights (ours or a published .pth; any class count)")
    # ---- data
    data_path: str | None = _f(None, "folder with train/ and val/ class folders; none = built-in digits")
    train_split: str = _f("train", "sub-folder of data_path with the training class folders")
    val_split: str = _f("val", "sub-folder of data_path with the validation class folders")
    input_size: int = _f(224, "square training and evaluation size")
    crop_pct: float = _f(224 / 256, "evaluation: resize to input_size / crop_pct, then centre crop")
    interpolation: str = _f("bicubic", "resize interpolation")
    mean: tuple[float, ...] = _f((0.485, 0.456, 0.406), "normalisation mean (comma-separated)")
    std: tuple[float, ...] = _f((0.229, 0.224, 0.225), "normalisation std (comma-separated)")
    workers: int = _f(8, "data-loading processes per training process (0: in the main process)")
    # ---- augmentation (timm)
    scale: tuple[float, ...] = _f((0.08, 1.0), "RandomResizedCrop area range")
    ratio: tuple[float, ...] = _f((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range")
    hflip: float = _f(0.5, "horizontal flip probability")
    color_jitter: float = _f(0.4, "colour jitter strength (timm turns it off under RandAugment)")
    auto_augment: str | None = _f("rand-m9-mstd0.5-inc1", "timm auto-augment policy; none to disable")
    reprob: float = _f(0.25, "random erasing probability")
    remode: str = _f("pixel", "random erasing fill mode")
    recount: int = _f(1, "random erasing regions")
    mixup: float = _f(0.8, "mixup alpha (0: off)")
    cutmix: float = _f(1.0, "cutmix alpha (0: off)")
    mixup_prob: float = _f(1.0, "probability of mixup or cutmix per batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix rather than mixup when both are on")
    smoothing: float = _f(0.1, "label smoothing")
    # ---- optimisation
    epochs: int = _f(300, "training epochs")
    batch_size: int = _f(128, "images per process and step (total batch = batch_size x processes)")
    lr: float | None = _f(None, "peak learning rate; none = lr_base x total batch / lr_base_size")
    lr_base: float = _f(5e-4, "learning rate per lr_base_size images (linear scaling)")
    lr_base_size: int = _f(512, "batch size that lr_base refers to")
    opt: str = _f("adamw", "timm optimizer name")
    opt_eps: float = _f(1e-8, "optimizer epsilon")
    weight_decay: float = _f(0.05, "weight decay (never on norms, biases, dt_bias, A_log)")
    clip_grad: float | None = _f(None, "gradient-norm clipping; none = off")
    sched: str = _f("cosine", "timm scheduler name, stepped every update")
    warmup_epochs: int = _f(5, "linear warm-up epochs")
    warmup_lr: float = _f(1e-6, "learning rate at the start of warm-up")
    min_lr: float = _f(1e-5, "learning rate at the end of the cosine")
    # ---- EMA of weights (timm ModelEmaV3)
    ema: bool = _f(True, "keep an EMA of the weights, evaluate it, choose the best checkpoint by it")
    ema_decay: float = _f(0.99996, "EMA decay per step at a total batch of lr_base_size (scaled as decay^(batch/size))")
    ema_warmup: bool = _f(False, "timm's EMA decay warm-up (useful for short runs)")
    # ---- runtime
    device: str = _f("auto", "auto, cpu, cuda, cuda:1, ... (under torchrun: the local GPU)")
    amp: str = _f("auto", "autocast dtype: auto (bf16 on CUDA, none on CPU), none, bf16, fp16", choices=_AMP)
    threads: int | None = _f(None, "CPU threads per process (torch.set_num_threads); none = torch's default")
    compile: bool = _f(False, "torch.compile the model")
    sync_bn: bool = _f(False, "SyncBatchNorm across processes")
    seed: int = _f(0, "random seed (model init, data order, augmentation)")
    deterministic: bool = _f(False, "deterministic algorithms only (bitwise-repeatable runs on CPU)")
    # ---- output
    output_dir: str | None = _f(None, "run folder; none = runs/<model>-<date-time>")
    save_every_steps: int = _f(0, "also write last.pth every this many steps (0: only at epoch ends)")
    resume: str | None = _f(None, "continue from a checkpoint, or a run folder's last.pth")
    stop_after_steps: int | None = _f(None, "stop after this many steps, saving nothing more (simulates a kill)")
    progress: bool | None = _f(None, "progress bar; none = only on a terminal, on rank 0")
    plot: bool = _f(True, "write curves.png at the end")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs the tensorboard package)")

    def __post_init__(self) -> None:
        for name in ("mean", "std", "scale", "ratio"):  # YAML gives lists
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` naming the first bad option."""
        positive = ("epochs", "batch_size", "input_size", "lr_base_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.amp not in _AMP:
            raise ValueError(f"amp: expected one of {', '.join(_AMP)}, got {self.amp!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct: must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean, std: need the same number of channels, got {len(self.mean)} and {len(self.std)}")
        for name in ("workers", "warmup_epochs", "save_every_steps", "smoothing", "mixup", "cutmix", "reprob"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be >= 1 or none, got {self.threads}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs: expected a dict, got {self.model_kwargs!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples become lists): safe for YAML, JSON and ``torch.load(weights_only=True)``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names raise a ``ValueError``)."""
        _check_names(changes, "replace")
        return dataclasses.replace(self, **changes)


# The digits recipe: what differs from the ImageNet one. 8x8 scans upscaled to 32x32, no flips (digits
# are not mirror-symmetric), mild crops, no mixup/RandAugment (too strong for 1,437 images), short EMA.
DIGITS_RECIPE: dict[str, Any] = dict(
    model="ppma_nano",
    input_size=32,
    crop_pct=1.0,
    interpolation="bilinear",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    workers=1,  # one loader process overlaps augmentation with the single-threaded model
    scale=(0.6, 1.0),
    ratio=(0.8, 1.25),
    hflip=0.0,
    color_jitter=0.0,
    auto_augment=None,
    reprob=0.0,
    mixup=0.0,
    cutmix=0.0,
    smoothing=0.1,
    epochs=12,
    batch_size=64,
    lr_base=1e-2,
    warmup_epochs=1,
    ema_decay=0.995,
    ema_warmup=True,
    threads=1,  # a small model: a second OpenMP thread gains little and collapses when the cores are shared
)


def digits_config(**overrides: Any) -> TrainConfig:
    """The recipe of ``ppma train`` without data: ``ppma_nano`` on scikit-learn's digits, CPU-sized."""
    _check_names(overrides, "digits_config")
    return TrainConfig(**{**DIGITS_RECIPE, **overrides})


def _check_names(values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The options in a YAML or JSON file, as a dict of field names (unknown names raise a ``ValueError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no file at {path}")
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config: {path} must hold a mapping of option names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    _check_names(values, f"config {path}")
    return values


# ---- flags generated from the fields --------------------------------------------------------------------


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _parser_for(hint: Any):
    """A function text -> value for a field's type (``none`` gives None where allowed)."""
    base, optional = _base_type(hint)

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if base is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
            return value
        if typing.get_origin(base) is tuple:
            return tuple(float(v) for v in text.split(",") if v.strip())
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return base(text)

    parse.__name__ = getattr(base, "__name__", str(base))  # argparse names the type in its errors
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per ``TrainConfig`` field; unset flags stay ``None`` (``argparse.SUPPRESS``)."""
    hints = _hints()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        base, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (recipe: {default})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if base is bool and not optional:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, type=_parser_for(hints[f.name]), metavar=f.name.upper(), **kwargs)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    """Layer the options: recipe <- ``base`` (e.g. a resumed run's config) <- ``--config`` file <- flags.

    The recipe is ``digits_config()`` when no layer names a ``data_path``, else ``TrainConfig()``.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    from_file = load_config_file(args.config) if getattr(args, "config", None) else {}
    layers = {**(base or {}), **from_file, **flags}
    recipe = dataclasses.asdict(TrainConfig()) if layers.get("data_path") else {**dataclasses.asdict(TrainConfig()),
                                                                               **DIGITS_RECIPE}  # fmt: skip
    return TrainConfig(**{**recipe, **layers})
