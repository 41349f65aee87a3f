#!/usr/bin/env bash
# session 18, device call 2 (scratch dev_call2.sh, not committed): the full serving bench at 72fcdb0 on a fresh
# machine, then the GPU end-to-end check (the L2-prefetch microbench of the same call: ../../l2_prefetch/)
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
R=$OUT/res; mkdir -p $R/e2e
source tools/device_unpack.sh >/dev/null 2>&1
DEADLINE=380 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
timeout 170 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1
