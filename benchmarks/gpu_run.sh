#!/usr/bin/env bash
# The device checks to run once on a CUDA machine (none was available when they were
# written): compiled and eager QEM steps, and the comparison table, on the GPU.
#   bash benchmarks/gpu_run.sh [out_dir]     (about 15 minutes on an H200-class GPU)
set -euo pipefail
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -m benchmarks.compiled_step --device cuda --repeats 100 | tee "$out/compiled_step.md"
python -m benchmarks.compare --device cuda --no-rescaled --out "$out" | tail -n 40
