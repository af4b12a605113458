"""Op-level benchmark: full and decomposed polyline attention, forward and forward+backward.

For each size it times our backends against the published-style stored mask (``reference``:
the (B, heads, N, N) mask built through a (B, heads, H, W, H, W) intermediate, two explicit
softmaxes, as the published code does), the stored mask through SDPA (``dense``), and unmasked
``scaled_dot_product_attention`` as the floor. Prints a table and writes JSON.

    python benchmarks/bench_ops.py --device cuda             # the issue's sizes, bf16, one GPU
    python benchmarks/bench_ops.py --device cpu --threads 2  # small sizes, float32, a few minutes
    python benchmarks/bench_ops.py --ppma-t-stages           # PPMA-T's own four attention shapes at 224
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import environment, measure, print_table, write_json  # noqa: E402

from ppma.ops import can_run, criss_cross_polyline_attention, polyline_attention  # noqa: E402

# (op, batch, H, W): full attention at N = 196, 1024, 4096, 16384; decomposed at 56, 128, 256 squared
SIZES = {
    "cuda": [("full", 128, 14, 14), ("full", 16, 32, 32), ("full", 2, 64, 64), ("full", 1, 128, 128),
             ("criss_cross", 16, 56, 56), ("criss_cross", 4, 128, 128), ("criss_cross", 1, 256, 256)],
    "cpu": [("full", 1, 14, 14), ("full", 1, 32, 32), ("criss_cross", 1, 56, 56), ("criss_cross", 1, 128, 128)],
}  # fmt: skip
# PPMA-T's attention at 224: (op, H, W, heads, d) of stages 1-4
PPMA_T_STAGES = [("criss_cross", 56, 56, 4, 16), ("criss_cross", 28, 28, 4, 32), ("full", 14, 14, 8, 32),
                 ("full", 7, 7, 16, 32)]  # fmt: skip
BACKENDS = {"cuda": ["triton", "flex", "dense", "reference"], "cpu": ["cpu", "dense", "reference", "flex"]}


def _inputs(batch, H, W, heads, d, dtype, device, grad):
    q, k, v = (torch.randn(batch, heads, H, W, d, device=device, dtype=dtype, requires_grad=grad) for _ in range(3))
    decays = [(-torch.rand(batch, heads, H, W, device=device) * 0.5).requires_grad_(grad) for _ in range(2)]
    return q, k, v, *decays


def _mask_gib(op, batch, H, W, heads) -> float:
    """Bytes of the stored float32 mask (full: N^2; decomposed: row and column masks)."""
    n = batch * heads * (H * W * H * W if op == "full" else H * W * (H + W))
    return 4 * n / 2**30


def run(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    sizes = [(op, batch, H, W, args.heads, args.head_dim) for op, batch, H, W in SIZES[device.type]]
    if args.quick:
        sizes = sizes[:1] + [s for s in sizes if s[0] == "criss_cross"][:1]
    if args.ppma_t_stages:
        batch = 128 if device.type == "cuda" else 1
        sizes = [(op, batch, H, W, heads, d) for op, H, W, heads, d in PPMA_T_STAGES]
    rows = []
    for op, batch, H, W, heads, head_dim in sizes:
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            ins = _inputs(batch, H, W, heads, head_dim, dtype, device, grad)
            fn_op = polyline_attention if op == "full" else criss_cross_polyline_attention
            fns = {}
            for name in args.backends or BACKENDS[device.type]:
                ok, why = can_run(name, op, ins[0], grad)
                if not ok:
                    continue
                if name in ("reference", "dense") and _mask_gib(op, batch, H, W, heads) > args.max_mask_gib:
                    continue  # would not fit: reported as skipped below

                def call(name=name):
                    out = fn_op(*ins, backend=name, check_values=False)
                    if grad:
                        out.float().sum().backward()
                    return out

                fns[name] = call

            if op == "full":  # the floor: unmasked fused attention on the same tokens
                flat = [t.reshape(batch, heads, H * W, -1) for t in ins[:3]]

                def sdpa():
                    out = F.scaled_dot_product_attention(*flat)
                    if grad:
                        out.float().sum().backward()
                    return out

                fns["sdpa (no mask)"] = sdpa
            ctx = torch.enable_grad() if grad else torch.inference_mode()
            with ctx, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                res = measure(fns, device, repeats=args.repeats)
            floor = res.get("sdpa (no mask)", {}).get("median_ms")
            for name, r in res.items():
                rows.append({
                    "op": op, "mode": mode, "batch": batch, "grid": f"{H}x{W}", "N": H * W, "heads": heads, "d": head_dim,
                    "backend": name,
                    "median_ms": r.get("median_ms"), "min_ms": r.get("min_ms"), "peak_gib": r.get("peak_gib"),
                    "x_sdpa": r["median_ms"] / floor if floor and "median_ms" in r else None,
                    "error": r.get("error"), "times_ms": r.get("times_ms"),
                })  # fmt: skip
            for name in args.backends or BACKENDS[device.type]:
                if name in ("reference", "dense") and name not in res and can_run(name, op, ins[0], grad)[0]:
                    rows.append({"op": op, "mode": mode, "batch": batch, "grid": f"{H}x{W}", "N": H * W,
                                 "backend": name, "error": f"skipped: stored mask > {args.max_mask_gib} GiB"})
            print(f"done {op} {mode} {H}x{W}", file=sys.stderr)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per backend (default 20 cuda, 7 cpu)")
    p.add_argument("--backends", nargs="*", default=None, help="subset of backends to time")
    p.add_argument("--max-mask-gib", type=float, default=None, help="skip stored-mask backends above this (default 24 cuda, 1 cpu)")
    p.add_argument("--quick", action="store_true", help="one full and one decomposed size only")
    p.add_argument("--ppma-t-stages", action="store_true",
                   help="PPMA-T's four attention shapes at 224 (heads, d per stage; batch 1 cpu, 128 cuda)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ops_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.repeats = args.repeats or (20 if args.device == "cuda" else 7)
    args.max_mask_gib = args.max_mask_gib or (24.0 if args.device == "cuda" else 1.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    print_table(rows, ["op", "mode", "batch", "grid", "heads", "d", "backend", "median_ms", "min_ms", "peak_gib", "x_sdpa", "error"])
    out = args.out or Path(__file__).resolve().parent / "results" / f"ops_{args.device}.json"
    write_json(out, environment(torch.device(args.device)), vars(args), rows)


if __name__ == "__main__":
    main()
