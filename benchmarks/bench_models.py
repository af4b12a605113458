"""Model-level benchmark: PPMA-T/S/B training and inference img/s, backbone latency and peak memory.

``ours`` is ``backend="auto"`` (triton for full attention and dense SDPA for decomposed attention on
CUDA; the ``cpu`` backend on CPU). ``published-style`` is ``backend="reference"``: the stored
(B, heads, N, N) mask built through a (B, heads, H, W, H, W) intermediate and two explicit softmaxes,
as the published code computes it. Prints a table and writes JSON.

    python benchmarks/bench_models.py --device cuda             # T/S/B at 224, batch 128, bf16; backbone at 512-2048
    python benchmarks/bench_models.py --device cpu --threads 2  # ppma_tiny, batch 1 inference at 224, a few minutes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import environment, measure, print_table, write_json  # noqa: E402

import ppma  # noqa: E402, F401  (registers the models)

BACKENDS = {"ours": "auto", "published-style": "reference", "dense": "dense", "cpu": "cpu", "no-attention": "auto"}


class _NoAttention:
    """A bound, not a model: the polyline ops replaced by ``v`` (everything else in the layer kept)."""

    def __enter__(self):
        import ppma.layers as layers

        self.saved = layers.polyline_attention, layers.criss_cross_polyline_attention
        layers.polyline_attention = layers.criss_cross_polyline_attention = lambda q, k, v, *a, **kw: v
        return self

    def __exit__(self, *exc):
        import ppma.layers as layers

        layers.polyline_attention, layers.criss_cross_polyline_attention = self.saved


def _bound(step):
    def run():
        with _NoAttention():
            return step()

    return run


# Dense arithmetic every backend shares: at fixed FLOPs no attention backend can go below their time.
_GEMM_CONV_OPS = ("aten::addmm", "aten::mm", "aten::mkldnn_convolution", "aten::convolution_overrideable")


def gemm_conv_floor_ms(step, repeats: int) -> float:
    """Fewest milliseconds the linears and convolutions of one ``step`` took (CPU self time, min over repeats).

    A measured bound: a CPU path that keeps float32 arithmetic cannot run the model faster than this.
    """
    best = float("inf")
    for _ in range(repeats):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        total = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in _GEMM_CONV_OPS)
        best = min(best, total / 1e3)
    return best


def _model(name: str, backend: str, device, channels_last: bool, compile_: bool):
    model = timm.create_model(name, backend=backend).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_ else model


def classification(args, device, dtype) -> list[dict]:
    rows = []
    for name in args.models:
        for task in args.tasks:
            fns, models = {}, {}
            x = torch.randn(args.batch, 3, args.size, args.size, device=device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = torch.randint(0, 1000, (args.batch,), device=device)
            for label in args.backends:
                model = _model(name, BACKENDS[label], device, args.channels_last, args.compile)
                models[label] = model
                if task == "inference":
                    model.eval()

                    def step(model=model):
                        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                            return model(x)
                else:
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

                    def step(model=model, opt=opt):
                        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                            loss = torch.nn.functional.cross_entropy(model(x), target)
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)

                fns[label] = _bound(step) if label == "no-attention" else step
            res = measure(fns, device, repeats=args.repeats, warmup=args.warmup)
            if device.type == "cpu" and "published-style" in fns:
                floor = gemm_conv_floor_ms(fns["published-style"], args.repeats)
                res["linear+conv only (bound)"] = {"median_ms": floor, "min_ms": floor}
            for label, r in res.items():
                med = r.get("median_ms")
                rows.append({
                    "model": name, "task": task, "input": f"{args.batch}x{args.size}", "backend": label,
                    "median_ms": med, "min_ms": r.get("min_ms"), "img_per_s": args.batch / med * 1e3 if med else None,
                    "peak_gib": r.get("peak_gib"), "error": r.get("error"), "times_ms": r.get("times_ms"),
                })  # fmt: skip
            del models, fns
            print(f"done {name} {task}", file=sys.stderr)
    return rows


def backbone(args, device, dtype) -> list[dict]:
    rows = []
    for name in args.models:
        for size in args.backbone_sizes:
            x = torch.randn(1, 3, size, size, device=device)
            fns = {}
            for label in args.backends:
                model = _model(name, BACKENDS[label], device, args.channels_last, args.compile).eval()

                def step(model=model):
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        return model.forward_features(x)

                fns[label] = _bound(step) if label == "no-attention" else step
            res = measure(fns, device, repeats=max(3, args.repeats // 2), warmup=1)
            for label, r in res.items():
                rows.append({
                    "model": name, "task": "backbone", "input": f"1x{size}", "backend": label,
                    "median_ms": r.get("median_ms"), "peak_gib": r.get("peak_gib"), "error": r.get("error"),
                    "times_ms": r.get("times_ms"),
                })  # fmt: skip
            del fns
            print(f"done {name} backbone {size}", file=sys.stderr)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default bfloat16 cuda, float32 cpu)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", nargs="*", default=None, help="default ppma_tiny ppma_small ppma_base (cuda), ppma_tiny (cpu)")
    p.add_argument("--tasks", nargs="*", default=None, help="inference training (default both on cuda, inference on cpu)")
    p.add_argument("--backends", nargs="*", default=None, choices=list(BACKENDS),
                   help="default: ours published-style (cuda); all, including the no-attention bound (cpu)")
    p.add_argument("--batch", type=int, default=None, help="default 128 cuda, 1 cpu")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbone-sizes", nargs="*", type=int, default=None, help="default 512 1024 2048 (cuda), none (cpu)")
    p.add_argument("--repeats", type=int, default=None, help="default 10 cuda, 7 cpu")
    p.add_argument("--warmup", type=int, default=None, help="default 3 cuda (5 with --compile), 2 cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/models_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    cuda = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.models = args.models or (["ppma_tiny", "ppma_small", "ppma_base"] if cuda else ["ppma_tiny"])
    args.tasks = args.tasks if args.tasks is not None else (["inference", "training"] if cuda else ["inference"])
    args.backends = args.backends or (["ours", "published-style"] if cuda else list(BACKENDS))
    args.batch = args.batch or (128 if cuda else 1)
    args.backbone_sizes = args.backbone_sizes if args.backbone_sizes is not None else ([512, 1024, 2048] if cuda else [])
    args.repeats = args.repeats or (10 if cuda else 7)
    args.warmup = args.warmup or ((5 if args.compile else 3) if cuda else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    rows = classification(args, device, dtype) + backbone(args, device, dtype)
    print_table(rows, ["model", "task", "input", "backend", "median_ms", "min_ms", "img_per_s", "peak_gib", "error"])
    out = args.out or Path(__file__).resolve().parent / "results" / f"models_{args.device}.json"
    write_json(out, environment(device), vars(args), rows)


if __name__ == "__main__":
    main()
