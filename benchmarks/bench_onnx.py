"""ONNX Runtime beside eager PyTorch on CPU: one model, batch 1, float32 inference.

    python benchmarks/bench_onnx.py [--model ppma_tiny] [--size 224] [--repeats 10] [--threads 2]

Exports the model (random weights: the time does not depend on them) with ``ppma.export`` (the
``reference`` attention backend, static size), checks the logits, then times ONNX Runtime, eager on the
same backend and eager on ``auto`` round-robin. Writes ``benchmarks/results/onnx_cpu.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from _timing import environment, measure, write_json

import ppma  # noqa: F401
from ppma.export import EXPORT_BACKEND


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ppma_tiny")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    model = timm.create_model(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        model.set_backend(EXPORT_BACKEND)
        start = time.perf_counter()
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["logits"], verbose=False)
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's workers spin after each run by default, taking the cores from eager's next run
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    with torch.inference_mode():
        want = model(x).numpy()
    diff = float(np.abs(session.run(None, {"x": xn})[0] - want).max())
    auto = timm.create_model(args.model).eval()
    auto.load_state_dict(model.state_dict())

    def eager(m):
        def run():
            with torch.inference_mode():
                m(x)

        return run

    fns = {"onnxruntime": lambda: session.run(None, {"x": xn}), f"eager {EXPORT_BACKEND}": eager(model),
           "eager auto": eager(auto)}  # fmt: skip
    results = measure(fns, torch.device("cpu"), args.repeats)
    print(f"{args.model}, batch 1, {args.size}x{args.size}, float32, {args.threads} threads; export {export_s:.0f} s, "
          f"ONNX Runtime vs eager max |diff| {diff:.1e}")  # fmt: skip
    print("| runtime | median ms | min ms |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} |" if "median_ms" in r else f"| {name} | {r} |")
    rows = [dict(runtime=name, **{k: v for k, v in r.items()}) for name, r in results.items()]
    out = Path(__file__).parent / "results" / "onnx_cpu.json"
    write_json(out, environment(torch.device("cpu")), dict(vars(args), export_s=export_s, max_abs_diff=diff), rows)


if __name__ == "__main__":
    main()
