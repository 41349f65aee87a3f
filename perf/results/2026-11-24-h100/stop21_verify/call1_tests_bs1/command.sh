#!/usr/bin/env bash
# stop 21 call 1: GPU tests at 35b17b2 (stop 20's engine/sampler/staging changes and 5bad028/9ba67c0's
# kernel PDL changes had not run on a GPU), then the batch-1 1B engine bench
export PYTHONUNBUFFERED=1 GIT_COMMIT=35b17b2; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; T0=$SECONDS
timeout 400 python3 -m pytest -q tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py tests/engine/test_async_scheduling.py tests/engine/test_step_shapes.py tests/engine/test_sampler.py tests/engine/test_model_runner.py > $R/gputests.txt 2>&1
echo "tests rc $? at $((SECONDS-T0)) s" >> $R/times.txt
timeout 90 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
timeout $((580-SECONDS+T0)) python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b --batches 1,32,128 --out $R > $R/engine_1b.log 2>&1
echo "bench rc $? at $((SECONDS-T0)) s" >> $R/times.txt
tar czf $OUT/res.tgz -C $OUT res
