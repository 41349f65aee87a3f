#!/usr/bin/env bash
# session 19 call 7: the full serving bench at e6f2ba1 (early PDL reads) on a fresh machine, then the
# GPU end-to-end check through the real tritonserver
export GIT_COMMIT=$(cat .git_commit 2>/dev/null) PYTHONUNBUFFERED=1
R=$OUT/res; mkdir -p $R/e2e
nvidia-smi -L > $R/gpu.txt
source tools/device_unpack.sh >/dev/null 2>&1
DEADLINE=380 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
timeout 170 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1
rm -f $R/serving/*_export.json $R/serving/inputs_*.json
tar czf $OUT/res.tgz -C $OUT res
