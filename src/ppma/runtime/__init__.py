"""The run runtime shared by classification (``ppma.train``), detection and segmentation (``ppma.dense``).

- ``distributed``: ``DistInfo`` (rank, world size, device), ``setup_distributed``, ``is_main_process``,
  autocast, ``unwrap``
- ``rng``: seeding; every rank's random states captured into and restored from a checkpoint
- ``sampler``: ``ResumableSampler`` (a shuffled shard that starts mid-epoch), ``ShardSampler``
- ``run_folder``: ``RunFolder`` (lock, stale files, signals, atomic saves), the one checkpoint format
  (``training_checkpoint``, ``restore_training``), ``resume_checkpoint`` (the one ``--resume``)
- ``log``: ``RunLog``: ``log.jsonl`` + the console line (+ TensorBoard); ``progress_bar`` (tqdm, rank 0)
- ``optim``: ``param_groups`` (the one weight-decay policy), the dense recipes' schedules from torch
- ``config``: ``option`` / ``resume_option``, the fields of the run config dataclasses
"""

from .distributed import (
    DistInfo,
    amp_dtype_for,
    autocast,
    cleanup_distributed,
    is_main_process,
    main_process_first,
    pick_device,
    setup_distributed,
    unwrap,
)
from .log import RunLog, console_line, progress_bar
from .optim import param_groups, warmup_multistep, warmup_poly
from .rng import all_rng_states, capture_rng, restore_rank_rng, restore_rng, rng_untouched, seed_everything
from .run_folder import (
    FORMAT_VERSION,
    RunFolder,
    RunStopped,
    changed_settings,
    plain,
    read_training_checkpoint,
    restore_training,
    resume_checkpoint,
    training_checkpoint,
)
from .sampler import ResumableSampler, ShardSampler, resumable_loader

__all__ = [
    "FORMAT_VERSION",
    "DistInfo",
    "ResumableSampler",
    "RunFolder",
    "RunLog",
    "RunStopped",
    "ShardSampler",
    "all_rng_states",
    "amp_dtype_for",
    "autocast",
    "capture_rng",
    "changed_settings",
    "cleanup_distributed",
    "console_line",
    "is_main_process",
    "main_process_first",
    "param_groups",
    "pick_device",
    "plain",
    "progress_bar",
    "read_training_checkpoint",
    "restore_rank_rng",
    "restore_rng",
    "restore_training",
    "resume_checkpoint",
    "resumable_loader",
    "rng_untouched",
    "seed_everything",
    "setup_distributed",
    "training_checkpoint",
    "unwrap",
    "warmup_multistep",
    "warmup_poly",
]
