"""Timing helpers shared by the benchmark scripts: interleaved repeats, medians, peak memory, JSON, tables.

Never imported by the tests. Backends are timed round-robin (A, B, C, A, B, C, ...) so that load
from other processes on a shared machine falls on all of them alike; medians are reported.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2) -> dict[str, dict]:
    """Median / min wall time (ms) of each callable, run interleaved; CUDA peak memory (GiB) per callable.

    A callable that raises (out of memory, unsupported) is reported with its error instead of times.
    """
    results: dict[str, dict] = {}
    live = {}
    for name, fn in fns.items():  # warm-up (compilation, autotuning) and peak memory, one callable at a time
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            for _ in range(warmup):
                fn()
            sync(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
            results[name] = {"peak_gib": peak, "times_ms": []}
            live[name] = fn
        except Exception as e:  # noqa: BLE001  (a benchmark row, not a failure)
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for _ in range(repeats):
        for name, fn in live.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            results[name]["times_ms"].append((time.perf_counter() - start) * 1e3)
    for r in results.values():
        if "times_ms" in r:
            r["median_ms"] = statistics.median(r["times_ms"])
            r["min_ms"] = min(r["times_ms"])
    return results


def environment(device: torch.device) -> dict:
    """Device, versions, thread count and date, written at the top of every JSON result."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    for mod in ("triton", "timm"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Plain ASCII table (no dependency)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def write_json(path: str | Path, env: dict, config: dict, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "times_ms"} for r in rows]
    path.write_text(json.dumps({"environment": env, "config": config, "results": slim}, indent=2))
    print(f"wrote {path}")
