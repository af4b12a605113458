"""The paper's mask ablation (its Table 4): the same network, data and recipe, once per mask and seed.

    from ppma.ablate import ablate
    table = ablate(masks=["none", "polyline", "rmt", "hilbert"], seeds=[0, 1])   # digits, ppma_nano, CPU
    print(table.markdown())

Each run is ``ppma.train.run`` on the base config with ``model_kwargs["mask"]`` set; runs go to
``<output_dir>/<mask>/seed<k>/`` and a finished run's ``result.json`` is reused when the ablation is
started again (an interrupted ablation resumes where it stopped). The table (``ablation.md``,
``ablation.json``) gives per mask: parameters, training and inference throughput (img/s on the
device used, mean over seeds), and top-1 (the run's best, EMA weights where the recipe keeps an
EMA) as mean +/- sample std over seeds, with each seed's value. Small data cannot resolve the
paper's 0.1-0.5 point differences: read a gap smaller than about two stds as noise.

Scan masks (``raster``, ``cross_scan``, ``hilbert``, ``zorder``) need full attention; when any is
chosen, every run of the ablation uses full attention in every stage (``decomposed=False``), so the
network stays the same across masks.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masks import MASKS, get_mask

__all__ = ["DEFAULT_MASKS", "AblationTable", "ablate", "default_base_config"]

DEFAULT_MASKS: tuple[str, ...] = tuple(MASKS)


def default_base_config(**overrides: Any):
    """The default ablation recipe: ``ppma train``'s digits recipe with ppma_nano on CPU, 3 epochs, no plots."""
    from .train import digits_config

    return digits_config(**{"epochs": 3, "device": "cpu", "plot": False, "progress": False, **overrides})


@dataclass
class AblationTable:
    """Per-run results and the per-mask summary of one ablation.

    Attributes:
        runs: one dict per (mask, seed): ``mask``, ``seed``, ``best_top1``, ``final_top1``, ``params``,
            ``train_images_per_s``, ``eval_images_per_s``, ``output_dir``.
        setup: model, data, epochs, device and network options shared by every run.
    """

    runs: list[dict[str, Any]] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One summary per mask, in the order run: params, throughputs (mean), top-1 mean/std and per seed."""
        rows = []
        for mask in dict.fromkeys(r["mask"] for r in self.runs):
            runs = [r for r in self.runs if r["mask"] == mask]
            top1 = [r["best_top1"] for r in runs]
            rows.append({
                "mask": mask,
                "params": runs[0]["params"],
                "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in runs),
                "eval_images_per_s": statistics.fmean(r["eval_images_per_s"] for r in runs),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else math.nan,
                "top1_per_seed": {r["seed"]: r["best_top1"] for r in runs},
                "summary": get_mask(mask).summary,
            })  # fmt: skip
        return rows

    def markdown(self) -> str:
        """The table in Markdown, like the paper's Table 4 with throughput and the spread over seeds."""
        lines = [
            "| mask | what | params (M) | train img/s | inference img/s | top-1 (mean ± std) | per seed |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for row in self.rows():
            std = "n/a" if math.isnan(row["top1_std"]) else f"{row['top1_std']:.2f}"
            seeds = ", ".join(f"{s}: {v:.2f}" for s, v in row["top1_per_seed"].items())
            lines.append(
                f"| {row['mask']} | {row['summary']} | {row['params'] / 1e6:.3f} | {row['train_images_per_s']:.0f} "
                f"| {row['eval_images_per_s']:.0f} | {row['top1_mean']:.2f} ± {std} | {seeds} |"
            )
        s = self.setup
        lines += [
            "",
            (
                f"{s.get('model')} on {s.get('data')}, {s.get('epochs')} epochs, seeds {s.get('seeds')}, device "
                f"{s.get('device')}, {s.get('attention')}. Top-1: best epoch of each run "
                f"({'EMA' if s.get('ema') else 'model'} weights). Differences below about two stds are noise."
            ),
        ]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """Setup, runs and rows as plain JSON types (NaN std as null)."""
        rows = [dict(r, top1_std=None if math.isnan(r["top1_std"]) else r["top1_std"]) for r in self.rows()]
        return {"setup": self.setup, "rows": rows, "runs": self.runs}


def _num_stages(config) -> int:
    import timm

    import ppma  # noqa: F401  (registers the models)

    if config.model not in timm.list_models("ppma_*"):
        raise ValueError(
            f"model: the ablation swaps PPMA's mask; expected one of {', '.join(timm.list_models('ppma_*'))}"
        )
    kwargs = {k: v for k, v in config.model_kwargs.items() if k not in ("mask", "decomposed")}
    return len(timm.create_model(config.model, **kwargs).stages)


def _checked(masks: Sequence[str], seeds: Sequence[int], base: Any, full_attention: bool | None) -> tuple:
    """Validated (masks, seeds, base config, full_attention, model kwargs): bad input fails before training."""
    masks = [get_mask(m).name for m in masks]  # unknown names fail before any training
    if not masks:
        raise ValueError("masks: expected at least one mask")
    if len(set(masks)) != len(masks):
        raise ValueError(f"masks: listed twice: {sorted({m for m in masks if masks.count(m) > 1})}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {seeds}")
    base = default_base_config() if base is None else base
    if full_attention is None:
        full_attention = any(MASKS[m].full_only for m in masks)
    model_kwargs = dict(base.model_kwargs)
    if full_attention:
        model_kwargs["decomposed"] = [False] * _num_stages(base)
    elif any(MASKS[m].full_only for m in masks):
        scans = [m for m in masks if MASKS[m].full_only]
        raise ValueError(
            f"masks: {', '.join(scans)} need full attention; drop full_attention=False (--keep-decomposed)"
        )
    return masks, seeds, base, full_attention, model_kwargs


def _one_run(base: Any, mask: str, seed: int, model_kwargs: dict, run_dir: Path, tag: str, log: Any) -> dict:
    """One mask and seed: its result, from ``result.json`` when an earlier call finished it; a run that was
    killed part-way continues from its ``last.pth``."""
    from .train import run

    result_file = run_dir / "result.json"
    if result_file.is_file():  # finished earlier: keep it
        result = json.loads(result_file.read_text())
        log(f"{tag} mask={mask} seed={seed}: done earlier, {result['best_top1']:.2f} top-1")
        return result
    log(f"{tag} mask={mask} seed={seed} -> {run_dir}")
    config = base.replace(seed=seed, output_dir=str(run_dir), model_kwargs=dict(model_kwargs, mask=mask),
                          resume="auto")  # fmt: skip
    summary = run(config)
    if summary["best_top1"] is None:
        raise ValueError(f"mask {mask} seed {seed}: the run stopped before its first evaluation")
    result = {"mask": mask, "seed": seed, "output_dir": str(run_dir)}
    result.update(
        {k: summary[k] for k in ("best_top1", "final_top1", "params", "train_images_per_s", "eval_images_per_s")}
    )
    result_file.write_text(json.dumps(result, indent=1))
    return result


def ablate(
    masks: Sequence[str] = DEFAULT_MASKS,
    seeds: Sequence[int] = (0, 1),
    base=None,
    output_dir: str | Path = "runs/ablate",
    full_attention: bool | None = None,
    log=print,
) -> AblationTable:
    """Train ``base`` once per mask and seed and tabulate the results.

    Args:
        masks: zoo names (``ppma.masks.MASKS``); default all of them.
        seeds: training seeds (model init, data order, augmentation).
        base: a ``ppma.train.TrainConfig``; default ``default_base_config()`` (digits, ppma_nano, CPU).
            Its ``seed``, ``output_dir`` and ``model_kwargs["mask"]`` are set per run.
        output_dir: folder for the runs and the table files.
        full_attention: full attention in every stage for every mask; default: exactly when a scan
            mask is among ``masks`` (they cannot run in decomposed stages).
        log: where progress lines go.

    Returns:
        The ``AblationTable``; ``ablation.md`` and ``ablation.json`` are written to ``output_dir``.
    """
    masks, seeds, base, full_attention, model_kwargs = _checked(masks, seeds, base, full_attention)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = AblationTable(setup={
        "model": base.model, "data": base.data_path or "digits (built in)", "epochs": base.epochs, "seeds": seeds,
        "device": base.device, "batch_size": base.batch_size, "ema": base.ema,
        "attention": "full attention in every stage" if full_attention else "the variant's decomposed stages",
        "model_kwargs": model_kwargs,
    })  # fmt: skip
    total = len(masks) * len(seeds)
    for n, (mask, seed) in enumerate(((m, s) for m in masks for s in seeds), start=1):
        table.runs.append(_one_run(base, mask, seed, model_kwargs, out / mask / f"seed{seed}", f"[{n}/{total}]", log))
    (out / "ablation.md").write_text(table.markdown())
    (out / "ablation.json").write_text(json.dumps(table.to_json(), indent=1))
    log(table.markdown())
    log(f"wrote {out / 'ablation.md'} and {out / 'ablation.json'}")
    return table
