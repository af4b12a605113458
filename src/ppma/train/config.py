"""``TrainConfig``: every training option in one typed dataclass, loadable from YAML/JSON and flags.

The defaults are the published ImageNet-1K recipe (design.md §8). ``digits_config()`` gives the
CPU recipe for the built-in digits dataset (the README's main job, also in ``configs/digits_nano.yaml``);
``dataset_config("cifar10", root)`` the recipe of a named benchmark (``ppma.train.datasets``).
Command-line flags are generated from the fields (``ppma.cli.options.add_dataclass_flags``), so the
dataclass is the one source of truth for names, types, defaults and help.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.config import check_field_types, option, resume_option

__all__ = ["DIGITS_RECIPE", "TrainConfig", "canonical_data_name", "dataset_config", "digits_config", "layered_config",
           "load_config_file", "recipe_for"]

_AMP = ("auto", "none", "bf16", "fp16")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's (PIL's) resize filters


@dataclass
class TrainConfig:
    """Options of ``ppma.train.run``; defaults reproduce the published ImageNet-1K recipe (design.md §8)."""

    # ---- model
    model: str = option("ppma_tiny", "timm model name")
    model_kwargs: dict = option({}, "more timm.create_model arguments, as JSON (e.g. '{\"mask\": \"rmt\"}')")
    drop_path: float | None = option(None, "stochastic depth rate; none = the variant's published rate")
    initial_checkpoint: str | None = option(None, "start from these weights (ours or published .pth; any class count)")
    # ---- data
    data: str | None = option(None, "a named benchmark: digits, cifar10, cifar100, fashion_mnist (its recipe applies); "
                              "none = data_path, or the built-in digits without one")
    data_root: str | None = option(None, "folder holding (or to download) the named dataset's standard files")
    data_path: str | None = option(None, "folder with train/ and val/ class folders; none = built-in digits")
    train_split: str = option("train", "sub-folder of data_path with the training class folders")
    val_split: str = option("val", "sub-folder of data_path with the validation class folders")
    input_size: int = option(224, "square training and evaluation size")
    crop_pct: float = option(224 / 256, "evaluation: resize to input_size / crop_pct, then centre crop")
    interpolation: str = option("bicubic", "resize interpolation")
    mean: tuple[float, ...] = option((0.485, 0.456, 0.406), "normalisation mean (comma-separated)")
    std: tuple[float, ...] = option((0.229, 0.224, 0.225), "normalisation std (comma-separated)")
    workers: int | None = option(None, "data-loading processes per training process (0: in the main process; "
                                       "default: 8, at most the CPUs available)")
    # ---- augmentation (timm)
    scale: tuple[float, ...] = option((0.08, 1.0), "RandomResizedCrop area range")
    ratio: tuple[float, ...] = option((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range")
    hflip: float = option(0.5, "horizontal flip probability")
    color_jitter: float = option(0.4, "colour jitter strength (timm turns it off under RandAugment)")
    auto_augment: str | None = option("rand-m9-mstd0.5-inc1", "timm auto-augment policy; none to disable")
    reprob: float = option(0.25, "random erasing probability")
    remode: str = option("pixel", "random erasing fill mode")
    recount: int = option(1, "random erasing regions")
    mixup: float = option(0.8, "mixup alpha (0: off)")
    cutmix: float = option(1.0, "cutmix alpha (0: off)")
    mixup_prob: float = option(1.0, "probability of mixup or cutmix per batch")
    mixup_switch_prob: float = option(0.5, "probability of cutmix rather than mixup when both are on")
    smoothing: float = option(0.1, "label smoothing")
    # ---- optimisation
    epochs: int = option(300, "training epochs")
    batch_size: int = option(128, "images per process and step (total batch = batch_size x processes)")
    lr: float | None = option(None, "peak learning rate; none = lr_base x total batch / lr_base_size")
    lr_base: float = option(5e-4, "learning rate per lr_base_size images (linear scaling)")
    lr_base_size: int = option(512, "batch size that lr_base refers to")
    opt: str = option("adamw", "timm optimizer name")
    opt_eps: float = option(1e-8, "optimizer epsilon")
    weight_decay: float = option(0.05, "weight decay (never on norms, biases, dt_bias, A_log)")
    clip_grad: float | None = option(None, "gradient-norm clipping; none = off")
    sched: str = option("cosine", "timm scheduler name, stepped every update")
    warmup_epochs: int = option(5, "linear warm-up epochs")
    warmup_lr: float = option(1e-6, "learning rate at the start of warm-up")
    min_lr: float = option(1e-5, "learning rate at the end of the cosine")
    # ---- EMA of weights (timm ModelEmaV3)
    ema: bool = option(True, "keep an EMA of the weights, evaluate it, choose the best checkpoint by it")
    ema_decay: float = option(0.99996, "EMA decay per step at a total batch of lr_base_size (decay^(batch/size))")
    ema_warmup: bool = option(False, "timm's EMA decay warm-up (useful for short runs)")
    # ---- runtime
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ... (under torchrun: the local GPU)")
    amp: str = option("auto", "autocast dtype: auto (bf16 on CUDA, none on CPU), none, bf16, fp16", choices=_AMP)
    threads: int | None = option(None, "CPU threads per process (torch.set_num_threads); none = torch's default")
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(False, "SyncBatchNorm across processes")
    seed: int = option(0, "random seed (model init, data order, augmentation)")
    deterministic: bool = option(False, "deterministic kernels only (torch.use_deterministic_algorithms; for CUDA)")
    # ---- output
    output_dir: str | None = option(None, "run folder; none = runs/<model>-<date-time>")
    save_every_steps: int = option(0, "also write last.pth every this many steps (0: only at epoch ends)")
    resume: str | None = resume_option()
    stop_after_steps: int | None = option(None, "stop after this many steps, saving nothing more (simulates a kill)")
    progress: bool | None = option(None, "progress bar; none = only on a terminal, on rank 0")
    plot: bool = option(True, "write curves.png at the end")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")

    def __post_init__(self) -> None:
        check_field_types(self)  # YAML gives lists for tuples, may give strings for numbers
        if self.data is not None:  # one spelling per dataset ("CIFAR-10" -> "cifar10"): runs compare by it
            self.data = canonical_data_name(self.data)
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` naming the first bad option."""
        positive = ("epochs", "batch_size", "input_size", "lr_base_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.amp not in _AMP:
            raise ValueError(f"amp: expected one of {', '.join(_AMP)}, got {self.amp!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation: expected one of {', '.join(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct: must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean, std: need the same number of channels, got {len(self.mean)} and {len(self.std)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers: must be >= 0 or none, got {self.workers}")
        for name in ("warmup_epochs", "save_every_steps", "smoothing", "mixup", "cutmix", "reprob"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be >= 1 or none, got {self.threads}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs: expected a dict, got {self.model_kwargs!r}")
        # build_model passes these itself: num_classes always (a clash in timm), drop_path_rate with drop_path
        if "num_classes" in self.model_kwargs:
            raise ValueError("model_kwargs: num_classes is the data's class count, set by the run; remove it")
        if "drop_path_rate" in self.model_kwargs and self.drop_path is not None:
            raise ValueError(f"model_kwargs: drop_path_rate {self.model_kwargs['drop_path_rate']} and drop_path "
                             f"{self.drop_path} both set the stochastic depth; give one")  # fmt: skip
        if self.data is None and self.data_root is not None:
            raise ValueError(f"data_root: {self.data_root!r} is only read with data (--data cifar10, ...); "
                             "an ImageNet-layout folder is data_path")  # fmt: skip
        if self.data is not None:
            canonical_data_name(self.data)  # unknown names fail here, before any folder is read
            if self.data_path is not None:
                raise ValueError(f"data, data_path: give one of them (a named dataset {self.data!r} or an "
                                 f"ImageNet-layout folder {self.data_path!r}), not both")  # fmt: skip
            if self.data != "digits" and self.data_root is None:
                raise ValueError(f"data_root: {self.data} needs the folder that holds (or will hold) its files")

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


def canonical_data_name(name: str) -> str:
    """``"digits"`` or a named benchmark's registry name (aliases such as ``cifar-10`` accepted).

    Raises:
        ValueError: (one line) an unknown name, listing the known ones.
    """
    if not isinstance(name, str):
        raise ValueError(f"data: expected a dataset name, got {name!r}")
    if name.lower() == "digits":
        return "digits"
    from .datasets import _spec

    return _spec(name).name


def recipe_for(data: str | None, data_path: str | None = None) -> dict[str, Any]:
    """The recipe a run starts from: the named dataset's (``named_recipe``), the digits one (no data at
    all, or ``data="digits"``), or none (``TrainConfig()``'s ImageNet defaults) for a ``data_path``."""
    if data is not None and canonical_data_name(data) != "digits":
        from .datasets import named_recipe

        return named_recipe(data)
    return {} if data_path and data is None else dict(DIGITS_RECIPE)


def dataset_config(data: str, data_root: str | None = None, **overrides: Any) -> TrainConfig:
    """A named dataset's recipe with ``overrides``: ``dataset_config("cifar10", "/data", epochs=5)``.

    ``"digits"`` gives the digits recipe (as ``digits_config``, with ``data="digits"``).
    """
    _check_names(overrides, "dataset_config")
    return TrainConfig(**{**recipe_for(data), "data": data, "data_root": data_root, **overrides})


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
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config: {path} is not valid JSON: {e}") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:  # the parser's message spans lines: keep the problem and its place
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ValueError(f"config: {path} is not valid YAML: {problem}{where}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config: {path} must hold a mapping of option names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    _check_names(values, f"config {path}")
    return values


def layered_config(base: dict[str, Any] | None = None, from_file: dict[str, Any] | None = None,
                   flags: dict[str, Any] | None = None) -> TrainConfig:  # fmt: skip
    """Layer the options: recipe <- ``base`` (e.g. a resumed run's config) <- a config file <- flags.

    The recipe (``recipe_for``): the named dataset's when a layer names ``data``, ``TrainConfig()``'s
    ImageNet defaults when one names a ``data_path``, else the digits recipe.
    """
    layers = {**(base or {}), **(from_file or {}), **(flags or {})}
    _check_names(layers, "options")
    if layers.get("data") is not None and layers.get("data_path") is not None:
        raise ValueError(f"--data, --data-path: give one of them, not both (got {layers['data']!r} and "
                         f"{layers['data_path']!r})")  # fmt: skip
    return TrainConfig(**{**recipe_for(layers.get("data"), layers.get("data_path")), **layers})
