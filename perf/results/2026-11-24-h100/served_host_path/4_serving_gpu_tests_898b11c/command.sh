#!/usr/bin/env bash
# scratch (not committed)
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R
DEADLINE=400 OUT=$R/serving bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_kernels_elementwise.py tests/engine/test_cuda_graphs.py tests/engine/test_async_scheduling.py tests/engine/test_sampler.py tests/engine/test_step_shapes.py tests/engine/test_numerics.py tests/engine/test_model_runner.py tests/engine/test_detokenizer.py tests/engine/test_remote.py > $R/gpu_tests.txt 2>&1
rm -rf $R/*/server $R/serving/*_export.json
find $R -name "model_repository" -prune -exec rm -rf {} \;
tar czf $OUT/res.tgz -C $OUT res
