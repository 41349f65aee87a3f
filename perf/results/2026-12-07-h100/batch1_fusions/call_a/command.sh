#!/usr/bin/env bash
# session 29, device call A (scratch; the steps of perf/ab_fusions_bs1.sh in this call's time):
# GPU tests of the new paths, batch-1 1B A/B of the settings, the step interior with all on.
export PYTHONUNBUFFERED=1; R=$OUT; nvidia-smi -L > $R/gpu.txt; cat $R/gpu.txt; cp gpu_call.sh $R/command.sh
M=/tmp/ab_llama-3.2-1b
python3 -m tools.random_llama --size llama-3.2-1b --out $M --dtype bfloat16 --device cuda > $R/model.log 2>&1
timeout 130 python3 -m pytest -q -x tests/kernels/test_kernels_rope_attention.py tests/kernels/test_kernels_linear.py > $R/pytest_kernels.log 2>&1; tail -1 $R/pytest_kernels.log; grep -E "^E |FAILED" $R/pytest_kernels.log | head -8
ALL="LLM_FUSED_DECODE_ATTENTION=1 LLM_NORM_LINEAR=1"
timeout 250 python3 perf/ab_configs_bs1.py --model-dir $M --out $R/ab.json --rounds 2 --timeout 90 \
    --config "name=old_signal LLM_ONE_ROW_SIGNAL=wait" --config "name=base" \
    --config "name=attention LLM_FUSED_DECODE_ATTENTION=1" --config "name=norm LLM_NORM_LINEAR=1" \
    --config "name=all $ALL" 2>&1 | tee $R/ab.log
env $ALL timeout 70 python3 perf/diag_step_gaps.py --model-dir $M --interior --out $R/interior > $R/interior.log 2>&1; grep -A6 "per step" $R/interior.log; grep -A26 "one step inside" $R/interior.log
tar -C $R -cJf $R/logs.tar.xz pytest_kernels.log interior.log model.log 2>/dev/null; rm -rf $R/pytest_kernels.log $R/interior.log $R/model.log $R/interior
