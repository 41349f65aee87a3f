#!/usr/bin/env bash
# stop 21 call 2: the sampler no-sync test after the index_fill_ fix, the full serving bench on a fresh
# machine, then the GPU end-to-end check through the real tritonserver
export GIT_COMMIT=bc6a6f7 PYTHONUNBUFFERED=1
R=$OUT/res; mkdir -p $R/e2e
nvidia-smi -L > $R/gpu.txt
timeout 60 python3 -m pytest -q tests/engine/test_sampler.py > $R/sampler_tests.txt 2>&1; echo "rc $?" >> $R/sampler_tests.txt
source tools/device_unpack.sh >/dev/null 2>&1
DEADLINE=380 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
timeout 150 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1
rm -f $R/serving/*_export.json $R/serving/inputs_*.json
tar czf $OUT/res.tgz -C $OUT res
