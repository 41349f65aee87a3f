#!/usr/bin/env bash
# scratch (not committed)
set -x
export GIT_COMMIT=$(cat .git_commit 2>/dev/null)
source tools/device_unpack.sh >/dev/null 2>&1
R=$OUT/res; mkdir -p $R/engine
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/engine/test_cuda_graphs.py tests/engine/test_sampler.py tests/engine/test_async_scheduling.py tests/engine/test_step_shapes.py tests/engine/test_numerics.py tests/kernels/test_kernels_elementwise.py > $R/gpu_tests.txt 2>&1
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
python3 perf/bench_engine.py --model-dir /tmp/m1b --batches 1,128 --out $R/engine > $R/engine/log.txt 2>&1
DEADLINE=380 OUT=$R/serving BENCH_ARGS="--skip hf" bash perf/run_gpu_bench.sh > $R/serving_stdout.txt 2>&1
rm -rf $R/serving/perf_analyzer/*_export.json $R/serving/perf_analyzer/inputs_*.json
tar czf $OUT/res.tgz -C $OUT res
