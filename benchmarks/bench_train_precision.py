"""Training steps on CPU at each ``--amp`` of ``ppma train`` (none, bf16), interleaved: issue 16, point 4.

One step = forward, cross-entropy, backward, AdamW step, as ``ppma train`` runs it (autocast through
``ppma.runtime.autocast``). An amp this CPU cannot run (bf16 without bf16 units) is printed and not
timed, as ``ppma train`` would refuse it. Default shapes: the digits job (ppma_nano, batch 64, 32x32,
1 thread, as its recipe) and PPMA-T at 224 (batch 8, 2 threads).

    python benchmarks/bench_train_precision.py                       # both shapes
    python benchmarks/bench_train_precision.py --model ppma_tiny --batch 8 --size 224 --threads 2 --repeats 5
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
from ppma.runtime import amp_dtype_for, autocast  # noqa: E402

SHAPES = [  # (model, batch, size, threads): the digits job, then PPMA-T
    ("ppma_nano", 64, 32, 1),
    ("ppma_tiny", 8, 224, 2),
]


def training_step(model_name: str, batch: int, size: int, amp_dtype):
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, target = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    cpu = torch.device("cpu")

    def step():
        with autocast(cpu, amp_dtype):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="one shape instead of the defaults (with --batch, --size, --threads)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amps", nargs="+", default=["none", "bf16"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "train_precision_cpu.json")
    args = p.parse_args(argv)
    shapes = [(args.model, args.batch, args.size, args.threads)] if args.model else SHAPES
    rows = []
    for model_name, batch, size, threads in shapes:
        torch.set_num_threads(threads)
        fns = {}
        for amp in args.amps:
            try:
                fns[amp] = training_step(model_name, batch, size, amp_dtype_for(amp, torch.device("cpu")))
            except ValueError as e:  # what ppma train would refuse on this CPU
                print(f"{model_name} --amp {amp}: not timed, {e}", flush=True)
        for amp, r in measure(fns, torch.device("cpu"), repeats=args.repeats, warmup=2).items():
            med = r.get("median_ms")
            rows.append({"model": model_name, "input": f"{batch}x{size}", "threads": threads, "amp": amp,
                         "median_ms": med, "min_ms": r.get("min_ms"), "img_per_s": batch / med * 1e3 if med else None,
                         "error": r.get("error"), "times_ms": r.get("times_ms")})  # fmt: skip
    print_table(rows, ["model", "input", "threads", "amp", "median_ms", "min_ms", "img_per_s", "error"])
    write_json(args.out, environment(torch.device("cpu")), {k: str(v) for k, v in vars(args).items()}, rows)


if __name__ == "__main__":
    main()
