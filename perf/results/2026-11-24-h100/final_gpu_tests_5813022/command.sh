#!/usr/bin/env bash
# session 19 call 10: GPU tests at the session's final kernels
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt
timeout 540 python3 -m pytest -q tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py tests/engine/test_async_scheduling.py tests/engine/test_step_shapes.py > $R/gputests.txt 2>&1
echo "tests rc $?" >> $R/gputests.txt
