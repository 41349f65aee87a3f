#!/usr/bin/env bash
# session 29, device call C (scratch, last of the stop's device time): GPU tests of the fused
# attention, and batch-1 1B: the norm fusion beside the default one-row signal (at the wait).
export PYTHONUNBUFFERED=1 GIT_COMMIT=e50daea; R=$OUT; nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt; cp gpu_call.sh $R/command.sh
M=/tmp/ab_llama-3.2-1b
python3 -m tools.random_llama --size llama-3.2-1b --out $M --dtype bfloat16 --device cuda > $R/model.log 2>&1 &
timeout 60 python3 -m pytest -q tests/kernels/test_kernels_rope_attention.py -k "gpu" > $R/pytest_kernels.log 2>&1; tail -1 $R/pytest_kernels.log; grep -E "^E  |FAILED" $R/pytest_kernels.log | head -6
wait
timeout 75 python3 perf/ab_configs_bs1.py --model-dir $M --out $R/ab.json --rounds 2 --timeout 40 \
    --config "name=base" --config "name=norm LLM_NORM_LINEAR=1" 2>&1 | tee $R/ab.log
