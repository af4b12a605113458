#!/usr/bin/env bash
# Every CPU measurement of issue 16 in one go (inference at each precision, compiled and eager, with
# profiles; training steps at --amp none/bf16; the README's main job at both), JSON and logs into
# benchmarks/results/ named by the CPU's matrix units. Run on a quiet machine from the repository root:
#   bash benchmarks/run_cpu_precision.sh            (about 30 minutes on 2 cores; compiles take most)
# Then read the tables into BENCHMARKS.md ("Precision" sections) with the CPU model and versions.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
if grep -q amx_bf16 /proc/cpuinfo; then units=amx; elif grep -q avx512_bf16 /proc/cpuinfo; then units=avx512bf16
elif grep -q avx2 /proc/cpuinfo; then units=avx2; else units=other; fi
out=benchmarks/results
log=$out/precision_cpu_${units}_run.log
load=$(cut -d' ' -f1 /proc/loadavg)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), units: $units, load average $load" | tee "$log"
awk -v l="$load" 'BEGIN { if (l > 1.0) print "warning: the machine is busy (load " l "): timings will be noisy" }' | tee -a "$log"
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$log"

run() { echo "+ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }
bench="$PY benchmarks/bench_precision.py --threads $THREADS"
run $bench --size 224 --batch 1 --repeats 21 --profile --out "$out/precision_cpu_${units}_224_b1.json"
run $bench --size 512 --batch 1 --repeats 7 --profile --out "$out/precision_cpu_${units}_512_b1.json"
run $bench --size 224 --batch 32 --repeats 5 --profile --out "$out/precision_cpu_${units}_224_b32.json"
for size in 224 512; do
    run $bench --size $size --batch 1 --repeats 7 --compile --rows published-style bf16 int8 \
        --out "$out/precision_cpu_${units}_${size}_b1_compiled.json"
done
run "$PY" benchmarks/bench_train_precision.py --out "$out/train_precision_cpu_${units}.json"
# The README's main job (point 4 of issue 16): end to end, each --amp the CPU runs, wall time and top-1.
for amp in none bf16; do
    start=$(date +%s)
    if run "$PY" -m ppma.cli train --amp $amp --output-dir "/tmp/ppma_main_job_$amp" --no-progress; then
        echo "main job --amp $amp: $(( $(date +%s) - start )) s" | tee -a "$log"
    fi
    rm -rf "/tmp/ppma_main_job_$amp"
done
