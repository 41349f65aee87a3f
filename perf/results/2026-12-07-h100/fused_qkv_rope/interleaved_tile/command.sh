#!/usr/bin/env bash
# session 25, device call 2: the fused qkv+RoPE kernel reading its pairs' rows as one interleaved
# tile (small_linear's k-loop): GPU tests with it on, batch-1 A/B at the 1B shape (2 rounds) and the
# 8B shape (1 round), the 1B step interior with it on.
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R/interior_on; nvidia-smi -L > $R/gpu.txt
LLM_FUSED_QKV_ROPE=1 timeout 150 python3 -m pytest -q -x tests/kernels/test_kernels_qkv_rope.py tests/engine/test_numerics.py > $R/pytest.log 2>&1; echo "pytest rc $?" >> $R/pytest.log
OUT=$R/ab_1b timeout 200 bash perf/ab_env_bs1.sh LLM_FUSED_QKV_ROPE 1 0 2 > $R/ab_1b_stdout.txt 2>&1
LLM_FUSED_QKV_ROPE=1 timeout 45 python3 perf/diag_step_gaps.py --model-dir /tmp/ab_llama-3.2-1b --out $R/interior_on --interior > $R/interior_on/log.txt 2>&1
SIZE=llama-3-8b OUT=$R/ab_8b timeout 200 bash perf/ab_env_bs1.sh LLM_FUSED_QKV_ROPE 1 0 1 > $R/ab_8b_stdout.txt 2>&1
tar -C $OUT -cJf $OUT/results.tar.xz res
