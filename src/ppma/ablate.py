"""The paper's mask ablation (its Table 4): the same network, data and recipe, once per mask and seed.

    from ppma.ablate import ablate
    table = ablate(masks=["none", "polyline", "rmt", "hilbert"], seeds=[0, 1, 2])   # digits, ppma_nano, CPU
    print(table.markdown())

Each run is ``ppma.train.run`` on the base config with ``model_kwargs["mask"]`` set; runs go to
``<output_dir>/<mask>/seed<k>/``. A run is reused only if it is the same run: its ``result.json``
stores a fingerprint of every setting that affects the result (``run_settings``: the effective
``TrainConfig`` without pure logistics such as the output folder or the progress bar, so model,
mask, network layout, data, recipe, epochs and seed, plus the ppma version). A stored run whose
settings differ is trained again (the default, with a line saying what changed) or refused
(``on_mismatch="refuse"``). An interrupted ablation continues its unfinished run from its
``last.pth``; a finished run keeps ``result.json``, ``log.jsonl`` and ``config.yaml``, and its
checkpoints only with ``keep_checkpoints``.

The table (``ablation.md``, ``ablation.json``) gives per mask: parameters and GMACs
(``ppma.flops.count_macs`` at the runs' input size), which network the row uses, inference
throughput measured in its own timed pass (the same batch and device for every row, repeats
interleaved across rows, median and range), top-1 (each run's best epoch, EMA weights where the
recipe keeps an EMA) as mean +/- std over seeds, and the paired difference to a baseline mask over
the seeds both ran, with its 95% Student-t interval (``ppma.stats.paired_difference``). At a seed
every weight the masks share, the data order and the augmentation are the same, so the seed's luck
cancels in the difference. The footer is built from the settings stored with the runs shown.

Scan masks (``raster``, ``cross_scan``, ``hilbert``, ``zorder``) need full attention; when any is
chosen, every run of the ablation uses full attention in every stage (``decomposed=False``), so the
network stays the same across masks.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .errors import PPMAError
from .masks import MASKS, get_mask

__all__ = [
    "DEFAULT_MASKS",
    "LOGISTICS",
    "AblationTable",
    "ablate",
    "default_base_config",
    "fingerprint",
    "measure_throughput",
    "run_settings",
    "setup_from_runs",
]

DEFAULT_MASKS: tuple[str, ...] = tuple(MASKS)

# TrainConfig fields that do not change what a run computes: where it writes, what it shows, how often
# it saves, how it is split over loader processes and threads (augmentation is seeded per image).
LOGISTICS: frozenset[str] = frozenset({
    "output_dir", "progress", "plot", "tensorboard", "resume", "save_every_steps", "stop_after_steps",
    "workers", "threads",
})  # fmt: skip


def default_base_config(**overrides: Any):
    """The default ablation recipe: on the digits (or a ``data_path`` folder), ``ppma train``'s digits
    recipe with ppma_nano on CPU, 3 epochs; with ``data="cifar10"`` (etc.) that dataset's recipe. No plots."""
    from .train.config import TrainConfig, _check_names, recipe_for

    _check_names(overrides, "default_base_config")
    data = overrides.get("data")
    named = data is not None and data.lower() != "digits"
    logistics = {"plot": False, "progress": False}
    if not named:
        logistics.update(epochs=3, device="cpu")
    return TrainConfig(**{**recipe_for(data), **logistics, **overrides})


# ---- what makes two runs the same run ------------------------------------------------------------------


def run_settings(config) -> dict[str, Any]:
    """Every setting of a ``TrainConfig`` that affects the result, as plain JSON types, with the ppma version."""
    from . import __version__

    values = {k: v for k, v in config.to_dict().items() if k not in LOGISTICS}
    return json.loads(json.dumps({**values, "ppma_version": __version__}, sort_keys=True, default=str))


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of ``run_settings`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """'epochs 3 -> 1, model_kwargs.decomposed [False, ...] -> (unset)' for the settings that differ."""
    old, new = _flat(old), _flat(new)
    changed = [f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in sorted(set(old) | set(new))
               if old.get(k, "(unset)") != new.get(k, "(unset)")]  # fmt: skip
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def _write_json(path: Path, value: Any) -> None:
    """Write atomically: a file that exists is complete (``result.json`` marks a finished run)."""
    atomic_write_text(path, json.dumps(value, indent=1))


# ---- the table ------------------------------------------------------------------------------------------


def _fmt_range(t: dict[str, float] | None) -> str:
    if not t:
        return "n/a"
    return f"{t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f})"


@dataclass
class AblationTable:
    """Per-run results and the per-mask summary of one ablation.

    Attributes:
        runs: one dict per (mask, seed): ``mask``, ``seed``, ``best_top1``, ``final_top1``, ``params``,
            ``num_classes``, ``train_images_per_s`` / ``eval_images_per_s`` (during training, for
            reference), ``output_dir``, ``fingerprint`` and ``settings``.
        setup: what the runs shown share (built from their stored settings by ``setup_from_runs``).
        baseline: the mask the paired differences are taken to; None: no differences.
        measured: per mask: ``gmacs``, ``network`` (a label shared by rows with the same network) and
            ``images_per_s`` (``ppma.stats.summarize`` of the timed repeats).
        throughput_setup: batch, input size, device, amp and repeats of the timed pass.
    """

    runs: list[dict[str, Any]] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    throughput_setup: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One summary per mask, in the order run: params, GMACs, network, throughput, top-1 mean/std and
        per seed, and the paired difference to the baseline (``diff``: mean, low, high, n; None for the
        baseline itself or without one)."""
        from .stats import paired_difference

        by_mask = {m: [r for r in self.runs if r["mask"] == m] for m in dict.fromkeys(r["mask"] for r in self.runs)}
        if self.baseline is not None and self.baseline not in by_mask:
            raise ValueError(f"baseline: {self.baseline!r} is not among the masks ({', '.join(by_mask)})")
        base = {r["seed"]: r["best_top1"] for r in by_mask.get(self.baseline, [])}
        rows = []
        for mask, runs in by_mask.items():
            top1 = [r["best_top1"] for r in runs]
            per_seed = {r["seed"]: r["best_top1"] for r in runs}
            diff = None
            if self.baseline is not None and mask != self.baseline:
                d = paired_difference(per_seed, base)
                diff = {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n, "confidence": d.confidence}
            measured = self.measured.get(mask, {})
            rows.append({
                "mask": mask,
                "summary": get_mask(mask).summary,
                "params": runs[0]["params"],
                "gmacs": measured.get("gmacs"),
                "network": measured.get("network"),
                "images_per_s": measured.get("images_per_s"),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else math.nan,
                "top1_per_seed": per_seed,
                "diff": diff,
                "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in runs),
                "eval_images_per_s": statistics.fmean(r["eval_images_per_s"] for r in runs),
            })  # fmt: skip
        return rows

    def markdown(self) -> str:
        """The table in Markdown, like the paper's Table 4 with cost, throughput and paired differences."""
        base = self.baseline
        lines = [
            f"| mask | what | network | params (M) | GMACs | inference img/s (median, range) | top-1 (mean ± std) "
            f"| Δ top-1 vs {base or 'baseline'} [95% CI] (n) | per seed |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        rows = self.rows()
        for row in rows:
            std = "n/a" if math.isnan(row["top1_std"]) else f"{row['top1_std']:.2f}"
            seeds = ", ".join(f"{s}: {v:.2f}" for s, v in row["top1_per_seed"].items())
            d = row["diff"]
            diff = ("baseline" if row["mask"] == base else "n/a") if d is None else (
                f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({d['n']})")  # fmt: skip
            gmacs = "n/a" if row["gmacs"] is None else f"{row['gmacs']:.3f}"
            lines.append(
                f"| {row['mask']} | {row['summary']} | {row['network'] or 'n/a'} | {row['params'] / 1e6:.3f} "
                f"| {gmacs} | {_fmt_range(row['images_per_s'])} | {row['top1_mean']:.2f} ± {std} | {diff} | {seeds} |"
            )
        lines += ["", *self._footer(rows)]
        return "\n".join(lines) + "\n"

    def _footer(self, rows: list[dict[str, Any]]) -> list[str]:
        s, out = self.setup, []
        out.append(
            f"{s.get('model')} on {s.get('data')}, {s.get('epochs')} epoch{'' if s.get('epochs') == 1 else 's'}, "
            f"input {s.get('input_size')}px, batch "
            f"{s.get('batch_size')}, device {s.get('device')}, seeds {s.get('seeds')}; {s.get('attention')}."
        )
        if s.get("varies"):
            out.append(f"Settings that differ between the runs shown: {', '.join(s['varies'])}.")
        out.append(f"Top-1: best epoch of each run ({'EMA' if s.get('ema') else 'model'} weights), mean ± sample std "
                   "over seeds.")  # fmt: skip
        if self.baseline is not None:
            out.append(
                f"Δ: the paired difference to {self.baseline}, the mean over seeds of (mask - {self.baseline}) at the "
                "same seed, with its 95% Student-t interval and the number of seeds n. An interval that contains 0 "
                "does not separate the two masks at this number of seeds."
            )
        networks: dict[str, list[str]] = {}
        for row in rows:
            if row["network"]:
                networks.setdefault(row["network"], []).append(row["mask"])
        if networks:
            layouts = self.measured.get("_networks", {})
            if len(networks) == 1:
                (label,) = networks
                out.append(f"Network {label} for every row: {layouts.get(label, '')}; parameter counts differ only "
                           "by the decay generators (none and rmt have none).")  # fmt: skip
            else:
                out.append("Networks: " + "; ".join(f"{label} = {layouts.get(label, '')} (rows: {', '.join(masks)})"
                                                     for label, masks in networks.items()) + ".")  # fmt: skip
        t = self.throughput_setup
        if t:
            out.append(
                f"Inference img/s: a timed pass of its own (not training time): forward passes of one batch of "
                f"{t['batch']} random images at {t['input_size']}px on {t['device']} (amp {t['amp']}), {t['repeats']} "
                "repeats interleaved across rows after a warm-up; median and range."
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """Setup, rows (with the paired differences) and every run's numbers, as plain JSON types (NaN as null)."""
        rows = [dict(r, top1_std=None if math.isnan(r["top1_std"]) else r["top1_std"]) for r in self.rows()]
        measured = {k: v for k, v in self.measured.items() if k != "_networks"}
        return {"setup": self.setup, "baseline": self.baseline, "throughput": self.throughput_setup,
                "networks": self.measured.get("_networks", {}), "rows": rows, "measured": measured,
                "runs": self.runs}  # fmt: skip


def _attention(model_kwargs: dict[str, Any]) -> str:
    decomposed = model_kwargs.get("decomposed")
    if decomposed is None:
        return "the variant's decomposed stages"
    if not any(decomposed):
        return "full attention in every stage"
    return "stages " + "/".join("decomposed" if d else "full" for d in decomposed)


def setup_from_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the runs share, read from their stored settings (so the footer describes the runs shown)."""
    settings = [r.get("settings") or {} for r in runs]

    def shared(key: str, of=lambda s, k: s.get(k)) -> Any:
        values = [json.dumps(of(s, key), sort_keys=True) for s in settings]
        return of(settings[0], key) if len(set(values)) == 1 else "varies"

    def layout(s: dict[str, Any], _key: str) -> dict[str, Any]:
        return {k: v for k, v in (s.get("model_kwargs") or {}).items() if k != "mask"}

    def data(s: dict[str, Any], _key: str) -> str:
        if s.get("data") not in (None, "digits"):
            return f"{s['data']} ({s.get('data_root')})"
        return s.get("data_path") or "digits (built in)"

    keys = ("model", "epochs", "input_size", "batch_size", "device", "ema", "amp", "ppma_version")
    setup = {k: shared(k) for k in keys}
    setup["data"] = shared("data", data)
    kwargs = shared("model_kwargs", layout)
    setup["model_kwargs"] = kwargs
    setup["attention"] = "varies" if kwargs == "varies" else _attention(kwargs)
    setup["seeds"] = sorted({r["seed"] for r in runs})
    # any other setting that differs between runs besides the mask and the seed
    flat = [_flat({k: v for k, v in s.items() if k != "seed"}) for s in settings]
    names = sorted(set().union(*flat)) if flat else []
    setup["varies"] = [n for n in names if n != "model_kwargs.mask"
                       and len({json.dumps(f.get(n), sort_keys=True) for f in flat}) > 1]  # fmt: skip
    return setup


# ---- throughput and cost, measured once per mask --------------------------------------------------------


def measure_throughput(
    models: dict[str, Any], input_size: int, batch: int, repeats: int, device: Any, amp_dtype: Any = None,
    warmup: int = 1,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Inference images/s of each model on the same random batch and device, ``repeats`` timed forward
    passes each, interleaved across the models (a change of load hits every row alike); per model
    ``ppma.stats.summarize`` of the img/s values (median, min, max, n)."""
    import torch

    from .runtime import autocast
    from .stats import summarize

    if repeats < 1 or batch < 1:
        raise ValueError(f"throughput: repeats and batch must be >= 1, got {repeats} and {batch}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, input_size, input_size).to(device)

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    speeds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode(), autocast(torch.device(device), amp_dtype):
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                speeds[name].append(batch / max(time.perf_counter() - start, 1e-9))
    return {name: summarize(v) for name, v in speeds.items()}


def _measure(table: AblationTable, configs: dict[str, Any], batch: int | None, repeats: int, log) -> None:
    """GMACs, network labels and the timed throughput pass for every mask of ``table``."""
    import timm
    import torch

    from .flops import count_macs
    from .runtime import amp_dtype_for, pick_device

    first = next(iter(configs.values()))
    device = pick_device(first.device)
    amp = amp_dtype_for(first.amp, device)
    batch = batch or first.batch_size
    models, networks, labels = {}, {}, {}
    with torch.random.fork_rng(devices=[]):  # building models draws random numbers: leave the caller's RNG alone
        torch.manual_seed(0)
        for mask, config in configs.items():
            num_classes = next(r["num_classes"] for r in table.runs if r["mask"] == mask)
            model = timm.create_model(config.model, num_classes=num_classes, **config.model_kwargs).eval()
            macs = count_macs(model, (1, 3, config.input_size, config.input_size))
            layout = {k: v for k, v in config.model_kwargs.items() if k != "mask"}
            key = json.dumps([config.model, config.input_size, layout], sort_keys=True)
            if key not in labels:
                labels[key] = chr(ord("A") + len(labels))
                networks[labels[key]] = f"{config.model}, {_attention(layout)}, {config.input_size}px"
            table.measured[mask] = {"gmacs": macs / 1e9, "network": labels[key]}
            models[mask] = model.to(device)
    if repeats > 0:
        log(f"timing inference: {len(models)} networks x {repeats} repeats, batch {batch} on {device}")
        speeds = measure_throughput(models, first.input_size, batch, repeats, device, amp)
        for mask, s in speeds.items():
            table.measured[mask]["images_per_s"] = s
        amp_name = str(amp).removeprefix("torch.") if amp else "none"
        table.throughput_setup = {"batch": batch, "input_size": first.input_size, "device": str(device),
                                  "amp": amp_name, "repeats": repeats}  # fmt: skip
    table.measured["_networks"] = networks


# ---- the runner -----------------------------------------------------------------------------------------


def _num_stages(config) -> int:
    import timm

    import ppma  # noqa: F401  (registers the models)

    if config.model not in timm.list_models("ppma_*"):
        raise ValueError(
            f"model: the ablation swaps PPMA's mask; expected one of {', '.join(timm.list_models('ppma_*'))}"
        )
    kwargs = {k: v for k, v in config.model_kwargs.items() if k not in ("mask", "decomposed")}
    return len(timm.create_model(config.model, **kwargs).stages)


def _checked(masks: Sequence[str], seeds: Sequence[int], base: Any, full_attention: bool | None,
             baseline: str | None, on_mismatch: str) -> tuple:  # fmt: skip
    """Validated (masks, seeds, base config, model kwargs, baseline): bad input fails before any training."""
    masks = [get_mask(m).name for m in masks]  # unknown names fail before any training
    if not masks:
        raise ValueError("masks: expected at least one mask")
    if len(set(masks)) != len(masks):
        raise ValueError(f"masks: listed twice: {sorted({m for m in masks if masks.count(m) > 1})}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {seeds}")
    if on_mismatch not in ("rerun", "refuse"):
        raise ValueError(f"on_mismatch: expected 'rerun' or 'refuse', got {on_mismatch!r}")
    if baseline is not None:
        baseline = get_mask(baseline).name
        if baseline not in masks:
            raise ValueError(f"baseline: {baseline!r} is not among the masks ({', '.join(masks)}); add it to the "
                             "masks, choose another baseline, or run without one (--no-baseline)")  # fmt: skip
        if len(seeds) < 2:
            raise ValueError(f"seeds: the 95% interval of a paired difference needs at least two seeds, got {seeds}; "
                             "pass --seeds 0,1,2 (or --no-baseline for a table without intervals)")  # fmt: skip
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
    return masks, seeds, base, model_kwargs, baseline


def _plan(run_dir: Path, settings: dict[str, Any]) -> tuple[str, str]:
    """(what to do with a run folder, why): done, resume, stale (differs), new."""
    key = fingerprint(settings)
    result, pending = run_dir / "result.json", run_dir / "settings.json"
    if result.is_file():
        stored = json.loads(result.read_text())
        if stored.get("fingerprint") == key:
            return "done", ""
        if "settings" not in stored:
            return "stale", "it was stored without its settings (an older ppma)"
        return "stale", _differences(stored["settings"], settings)
    if (run_dir / "last.pth").is_file():
        if not pending.is_file():
            return "stale", "an unfinished run without a record of its settings"
        stored = json.loads(pending.read_text())
        if stored.get("fingerprint") == key:
            return "resume", ""
        return "stale", "unfinished, " + _differences(stored["settings"], settings)
    return "new", ""


def ablate(
    masks: Sequence[str] = DEFAULT_MASKS,
    seeds: Sequence[int] = (0, 1),
    base=None,
    output_dir: str | Path = "runs/ablate",
    full_attention: bool | None = None,
    log: Callable[[str], Any] = print,
    baseline: str | None = "none",
    on_mismatch: str = "rerun",
    keep_checkpoints: bool = False,
    throughput_repeats: int = 5,
    throughput_batch: int | None = None,
) -> AblationTable:
    """Train ``base`` once per mask and seed and tabulate the results.

    Args:
        masks: zoo names (``ppma.masks.MASKS``); default all of them.
        seeds: training seeds (model init, data order, augmentation); the same for every mask.
        base: a ``ppma.train.TrainConfig``; default ``default_base_config()`` (digits, ppma_nano, CPU).
            Its ``seed``, ``output_dir``, ``resume`` and ``model_kwargs["mask"]`` are set per run.
        output_dir: folder for the runs and the table files.
        full_attention: full attention in every stage for every mask; default: exactly when a scan
            mask is among ``masks`` (they cannot run in decomposed stages).
        log: where progress lines go.
        baseline: the mask every other is compared with (paired over seeds, 95% interval); it must be
            among ``masks`` and needs two seeds or more. None: no differences (one seed is then allowed).
        on_mismatch: a stored run with other settings is trained again (``"rerun"``) or refused with
            a one-line error before anything is trained (``"refuse"``).
        keep_checkpoints: keep ``last.pth`` / ``best.pth`` of finished runs (default: deleted once the
            run's ``result.json`` is written).
        throughput_repeats: timed inference passes per mask (0: no timing).
        throughput_batch: images per timed pass; default the recipe's batch size.

    Returns:
        The ``AblationTable``; ``ablation.md`` and ``ablation.json`` are written to ``output_dir``.
    """
    from .train import run

    masks, seeds, base, model_kwargs, baseline = _checked(masks, seeds, base, full_attention, baseline, on_mismatch)
    out = Path(output_dir)
    jobs = []
    for mask in masks:
        for seed in seeds:
            config = base.replace(seed=seed, model_kwargs=dict(model_kwargs, mask=mask), resume=None,
                                  output_dir=str(out / mask / f"seed{seed}"))
            settings = run_settings(config)
            status, why = _plan(Path(config.output_dir), settings)
            jobs.append((mask, seed, config, settings, status, why))
    stale = [(m, s, why) for m, s, _, _, status, why in jobs if status == "stale"]
    if stale and on_mismatch == "refuse":
        m, s, why = stale[0]
        raise PPMAError(f"output: {out / m / f'seed{s}'} holds a run with other settings ({why})"
                        + (f"; {len(stale) - 1} more differ" if len(stale) > 1 else "")
                        + "; use another --output-dir, or --on-mismatch rerun to train them again")  # fmt: skip

    table = AblationTable(baseline=baseline)
    for n, job in enumerate(jobs, start=1):
        table.runs.append(_run_job(run, job, f"[{n}/{len(jobs)}]", keep_checkpoints, log))
    table.setup = setup_from_runs(table.runs)
    first_seed = {m: next(c for mm, _, c, *_ in jobs if mm == m) for m in masks}
    _measure(table, first_seed, throughput_batch, throughput_repeats, log)
    md = table.markdown()
    atomic_write_text(out / "ablation.md", md)
    _write_json(out / "ablation.json", table.to_json())
    log(md)
    log(f"wrote {out / 'ablation.md'} and {out / 'ablation.json'}")
    return table


def _run_job(run, job: tuple, tag: str, keep_checkpoints: bool, log: Callable[[str], Any]) -> dict[str, Any]:
    """One planned (mask, seed): reuse a finished run, continue an unfinished one, or train it (again)."""
    mask, seed, config, settings, status, why = job
    run_dir = Path(config.output_dir)
    tag = f"{tag} mask={mask} seed={seed}"
    if status == "done":
        result = json.loads((run_dir / "result.json").read_text())
        log(f"{tag}: done earlier, {result['best_top1']:.2f} top-1")
        return result
    if status == "stale":
        log(f"{tag}: the stored run differs ({why}); training it again")
        shutil.rmtree(run_dir)
    if status == "resume":
        log(f"{tag}: continuing the unfinished run from {run_dir / 'last.pth'}")
        config = config.replace(resume=str(run_dir / "last.pth"))
    else:
        log(f"{tag} -> {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in ("log.jsonl", "result.json"):  # of an attempt killed before its first checkpoint
            (run_dir / leftover).unlink(missing_ok=True)
        _write_json(run_dir / "settings.json", {"fingerprint": fingerprint(settings), "settings": settings})
    return _train(run, config, settings, mask, seed, keep_checkpoints)


def _train(run, config, settings: dict[str, Any], mask: str, seed: int, keep_checkpoints: bool) -> dict[str, Any]:
    """One run; its ``result.json`` (with the fingerprint) and, unless kept, no checkpoints."""
    import torch

    run_dir = Path(config.output_dir)
    summary = run(config)
    if summary["best_top1"] is None or summary["stopped"]:
        raise PPMAError(f"mask {mask} seed {seed}: the run stopped after step {summary['steps']} before it finished; "
                        "run the ablation again to continue it")  # fmt: skip
    best = torch.load(run_dir / "best.pth", map_location="cpu", weights_only=True, mmap=True)
    result = {"mask": mask, "seed": seed, "output_dir": str(run_dir), "num_classes": int(best["num_classes"])}
    result.update({k: summary[k] for k in ("best_top1", "best_epoch", "final_top1", "params", "epochs", "steps",
                                           "train_images_per_s", "eval_images_per_s")})  # fmt: skip
    result.update(fingerprint=fingerprint(settings), settings=settings)
    _write_json(run_dir / "result.json", result)
    del best
    if not keep_checkpoints:  # after result.json: a kill in between leaves a finished run with its files
        for name in ("last.pth", "best.pth"):
            (run_dir / name).unlink(missing_ok=True)
    (run_dir / "settings.json").unlink(missing_ok=True)
    return result
