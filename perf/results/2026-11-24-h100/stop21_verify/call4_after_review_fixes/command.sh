#!/usr/bin/env bash
# stop 21 call 4: GPU tests after this stop's review fixes (c4f7681: scheduler in-flight deferral, detokenizer,
# stop-token text, delivery failure exit, rejected metric, client), the GPU end-to-end check through the
# real tritonserver, and the batch-1 1B engine bench
export PYTHONUNBUFFERED=1 GIT_COMMIT=c4f7681
R=$OUT/res; mkdir -p $R/e2e; nvidia-smi -L > $R/gpu.txt; T0=$SECONDS
timeout 330 python3 -m pytest -q tests/kernels/test_kernels_attention.py tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py tests/engine/test_async_scheduling.py tests/engine/test_sampler.py tests/engine/test_model_runner.py tests/engine/test_scheduler.py tests/engine/test_detokenizer.py tests/engine/test_stop.py tests/engine/test_stop_text.py > $R/gputests.txt 2>&1
echo "tests rc $? at $((SECONDS-T0)) s" >> $R/times.txt
source tools/device_unpack.sh >/dev/null 2>&1
timeout 150 python3 perf/gpu_e2e_check.py --out $R/e2e > $R/e2e/log.txt 2>&1
echo "e2e rc $? at $((SECONDS-T0)) s" >> $R/times.txt
timeout 60 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
timeout $((585-SECONDS+T0)) python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b --batches 1 --out $R > $R/engine_1b.log 2>&1
echo "bench rc $? at $((SECONDS-T0)) s" >> $R/times.txt
tar czf $OUT/res.tgz -C $OUT res
