"""PPMA-T inference on CPU at each precision of ``ppma.for_inference``, beside the float32 published-style path.

Rows: ``published-style`` (``backend="reference"``, float32, eager: the baseline), ``fp32`` / ``bf16`` /
``int8`` (``for_inference``; ``--compile`` adds torch.compile). All rows are timed round-robin in one
process (interleaved repeats); median, min and max ms, img/s, and the speed-up over published-style.
With ``--profile`` each row's top ops by CPU self time are printed (what bounds it).

    python benchmarks/bench_precision.py --threads 2 --size 224 --batch 1 --repeats 9
    python benchmarks/bench_precision.py --threads 2 --size 512 --batch 1 --repeats 5 --profile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import environment, write_json  # noqa: E402

import ppma  # noqa: E402, F401  (registers the models)
from ppma.cpu_units import listed_units  # noqa: E402
from ppma.inference import for_inference, int8_route  # noqa: E402


def build(args) -> dict:
    base = timm.create_model(args.model).eval()
    rows = {}
    if "published-style" in args.rows:
        ref = timm.create_model(args.model, backend="reference").eval()
        ref.load_state_dict(base.state_dict())
        rows["published-style"] = ref
    for precision in ("fp32", "bf16", "int8"):
        if precision in args.rows:
            try:
                rows[precision] = for_inference(base, precision, compile=args.compile)
            except ValueError as e:  # a precision this CPU cannot run: say so, time the rest
                print(f"{precision}: not timed, {e}", flush=True)
                continue
            if precision == "int8":
                print(f"int8 runs as: {int8_route()}", flush=True)
    return rows


def profile(fn, x, top: int) -> list[tuple[str, float, int]]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events[:top]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ppma_tiny")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--rows", nargs="+", default=["published-style", "fp32", "bf16", "int8"])
    p.add_argument("--compile", action="store_true", help="for_inference(..., compile=True) for the precision rows")
    p.add_argument("--profile", action="store_true", help="top ops by CPU self time per row")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    units = ", ".join(listed_units()) or "unknown"
    print(f"CPU: {environment(torch.device('cpu'))['device']}; matrix/vector units: {units}")
    torch.manual_seed(0)
    rows = build(args)
    x = torch.randn(args.batch, 3, args.size, args.size)
    times: dict[str, list[float]] = {name: [] for name in rows}
    results: dict[str, dict] = {}
    with torch.inference_mode():
        want = None
        for name, fn in rows.items():  # warm-up (compilation), and each row's logits against float32's
            start = time.perf_counter()
            out = fn(x).float()
            fn(x)
            results[name] = {"warmup_s": time.perf_counter() - start}
            if want is None:
                want = out
            results[name]["max_rel_logit_err"] = ((out - want).abs().max() / want.abs().max()).item()
            print(f"{name}: warm-up {results[name]['warmup_s']:.1f} s, logits off by "
                  f"{results[name]['max_rel_logit_err']:.2g} of their range", flush=True)
        for _ in range(args.repeats):
            for name, fn in rows.items():
                start = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - start) * 1e3)
        if args.profile:
            for name, fn in rows.items():
                results[name]["profile"] = profile(fn, x, 12)
    base = statistics.median(times[next(iter(times))])
    print(f"\n{args.model}, batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, {args.repeats} interleaved repeats")
    print(f"| row | median ms [min, max] | img/s | speed-up over {next(iter(times))} |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name].update(times_ms=ts, median_ms=med, min_ms=min(ts), max_ms=max(ts),
                             img_per_s=args.batch * 1e3 / med, speedup=base / med)
        print(f"| {name} | {med:.1f} [{min(ts):.1f}, {max(ts):.1f}] | {args.batch * 1e3 / med:.1f} | {base / med:.2f}x |")
    if args.profile:
        for name, r in results.items():
            print(f"\n{name}: top ops by CPU self time (ms, calls) in one forward")
            for key, ms, count in r["profile"]:
                print(f"  {key:40s} {ms:8.2f} {count:6d}")
    if args.out:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        write_json(args.out, environment(torch.device("cpu")), config, [{"row": k, **v} for k, v in results.items()])


if __name__ == "__main__":
    main()
