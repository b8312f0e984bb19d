#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md and the GPU parity tests in one command, so that a short
# stay on a GPU machine gives the whole table (not yet run on a GPU: allow 10 minutes on an H100/H200):
#
#     benchmarks/gpu.sh [OUTDIR]      # default OUTDIR: gpu-results
#
# Needs jax with its CUDA plugin, flax >= 0.12, torch with CUDA, open_clip_torch and ftfy importable.
# Each step tees its output into OUTDIR, so what finished is kept if the run is cut short.
set -uo pipefail
out=$(realpath -m "${1:-gpu-results}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python -c 'import sys, jax, flax, torch, open_clip; print("python", sys.version.split()[0], "jax", jax.__version__,
        "flax", flax.__version__, "torch", torch.__version__, "open_clip", open_clip.__version__, jax.devices())'
} 2>&1 | tee "$out/device.txt"

# The four models, image and text towers (77 tokens and trimmed), XLA and cuDNN attention, batch 1024.
python -m benchmarks.models --device gpu 2>&1 | tee "$out/models.txt"

# bf16, cuDNN attention, trimming and the folded ResNet convs against open_clip float32 (the test
# session defaults to the CPU: tests/conftest.py).
JAX_PLATFORMS=cuda python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.txt"
