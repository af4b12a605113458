"""Training and evaluation: ``TrainConfig`` (the published recipe), ``run(config)``, ``evaluate_checkpoint``,
``predict_images``.

    from ppma.train import TrainConfig, digits_config, run
    summary = run(digits_config(epochs=5, output_dir="runs/digits"))   # the README's main job, shortened
    summary = run(TrainConfig(data_path="/data/imagenet"))              # the published ImageNet-1K recipe
"""

from .config import DIGITS_RECIPE, TrainConfig, digits_config, load_config_file
from .engine import evaluate, evaluate_checkpoint, predict_images, run, train_one_epoch

__all__ = [
    "DIGITS_RECIPE",
    "TrainConfig",
    "digits_config",
    "evaluate",
    "evaluate_checkpoint",
    "load_config_file",
    "predict_images",
    "run",
    "train_one_epoch",
]
