#!/usr/bin/env bash
# The prepared device check of issue 19, for a session that is lent a GPU (the `device` tool's `run`):
#   run: bash scripts/gpu_check.sh   (timeout ~540 s; it writes its logs into $OUT)
# 1. the whole suite on CuPy (float64 and the default float32), 2. the GPU-marked tests and the CUDA
# kernels against the reference, 3. the benchmark against torch CUDA on the same GPU (configs B, C).
# Each part writes its own log, so a part cut short by the time limit still leaves the others.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import cupy; print('cupy', cupy.__version__)" >> "$OUT/gpu.txt" 2>&1 \
  || pip install -q "cupy-cuda13x>=13.6" >> "$OUT/gpu.txt" 2>&1
pip install -q -e ".[test]" > "$OUT/install.txt" 2>&1
export OPENBLAS_NUM_THREADS=4
VIETNAMESE_AI_BACKEND=cupy timeout 240 pytest -q -p no:cacheprovider -x -q > "$OUT/suite_cupy.txt" 2>&1
VIETNAMESE_AI_KERNELS=fast timeout 60 pytest -q -p no:cacheprovider -m gpu > "$OUT/gpu_marked.txt" 2>&1
timeout 180 python benchmarks/bench.py --backend cupy --configs B,C --no-memory --json "$OUT/bench.json" \
  > "$OUT/bench.txt" 2>&1
tail -n 3 "$OUT"/*.txt
