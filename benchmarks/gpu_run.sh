#!/usr/bin/env bash
# The device checks, run once on a CUDA machine: whether compiled steps draw in the eager
# order, a preflight (a few eager and compiled steps of every model on the GPU; stops
# here if any fails), then the compiled and eager
# QEM steps, the logistic regression at 1e5-1e6 rows against Pyro SVI, and the selected
# configurations of the comparison table, each under its own time limit.
#   bash benchmarks/gpu_run.sh [out_dir]     (about 9 minutes on an H200; results of 2026-11-30 in benchmarks/results/gpu)
set -uo pipefail
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
dev="${DEVICE:-cuda}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
"$py" -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__)" | tee -a "$out/device.txt"
timeout 120 "$py" -m benchmarks.rng_order "$dev" 2>&1 | tee "$out/rng_order.txt"
"$py" -m benchmarks.gpu_preflight --device "$dev" 2>&1 | tee "$out/preflight.txt" || exit 1
timeout 180 "$py" -m benchmarks.compiled_step --device "$dev" --repeats 60 \
    --modes inductor cudagraphs 2>&1 | tee "$out/compiled_step.md"
timeout 100 "$py" -m benchmarks.scale_speed --device "$dev" --rows 100000 1000000 --K 10 30 \
    --repeats 40 2>&1 | tee "$out/scale_speed.md"
compare_out="$(mktemp -d)"
timeout 200 "$py" -m benchmarks.compare --device "$dev" --selected --no-rescaled \
    --out "$compare_out" 2>&1 | tail -n 45 | tee "$out/compare_tail.md"
cp "$compare_out"/table.md "$compare_out"/headline.md "$out"/ 2>/dev/null || true
