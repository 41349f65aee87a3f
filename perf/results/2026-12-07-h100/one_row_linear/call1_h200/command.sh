#!/usr/bin/env bash
# session 26, device call 1: one_row_linear (whole weight slice loaded before the PDL wait):
# GPU tests, batch-1 1B A/B (LLM_ONE_ROW_LINEAR 1 vs 0, 2 rounds), step interior with it on,
# and a variant with the RMSNorm letting the next kernel launch at its start (one run).
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R/interior_on $R/var_norm_at_start; nvidia-smi -L > $R/gpu.txt
cp gpu_call.sh $R/command.sh
timeout 170 python3 -m pytest -q -x tests/kernels/test_kernels_linear.py tests/engine/test_numerics.py tests/engine/test_cuda_graphs.py > $R/pytest.log 2>&1; echo "pytest rc $?" >> $R/pytest.log
OUT=$R/ab_1b timeout 220 bash perf/ab_env_bs1.sh LLM_ONE_ROW_LINEAR 1 0 2 > $R/ab_1b_stdout.txt 2>&1
timeout 45 python3 perf/diag_step_gaps.py --model-dir /tmp/ab_llama-3.2-1b --out $R/interior_on --interior > $R/interior_on/log.txt 2>&1
cp kernels/norm.py /tmp/norm.bak
sed -i 's/PDL=(pdl := pdl_mode(x.device)),/PDL=(pdl := pdl_mode(x.device, signal_at_start=True)),/' kernels/norm.py
diff -u /tmp/norm.bak kernels/norm.py > $R/var_norm_at_start/variant.diff
timeout 60 python3 perf/bench_engine.py --model-dir /tmp/ab_llama-3.2-1b --tag var_norm_at_start --batches 1 --out $R/var_norm_at_start > $R/var_norm_at_start/log.txt 2>&1
cp /tmp/norm.bak kernels/norm.py
timeout 60 python3 perf/bench_engine.py --model-dir /tmp/ab_llama-3.2-1b --tag base_again --batches 1 --out $R/var_norm_at_start > $R/var_norm_at_start/base_log.txt 2>&1
grep -h "_tokps\|graph_ms" $R/var_norm_at_start/*.json
