#!/usr/bin/env bash
# session 19 call 5: issue 3's figures at e6f2ba1 (kernels bench, batch-1 1B and 8B engine), the new
# deterministic early-read test on the GPU, and var_D (1B down projection unsplit, 16-row tiles) vs committed
export PYTHONUNBUFFERED=1 GIT_COMMIT=e6f2ba1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; { lscpu; nproc; } > $R/cpu.txt 2>&1
T0=$SECONDS
timeout 100 python3 -m pytest -q tests/kernels/test_kernels_attention.py -k "earlier_steps or gpu_decode" > $R/test_attention.txt 2>&1
echo "test rc $? at $((SECONDS-T0)) s" >> $R/times.txt
timeout 200 python3 perf/bench_kernels.py --out $R > $R/kernels.log 2>&1
echo "kernels rc $? at $((SECONDS-T0)) s" >> $R/times.txt
timeout 120 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
timeout 100 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b --batches 1,32,128 --out $R > $R/engine_1b.log 2>&1
(cd var_D && GIT_COMMIT=e6f2ba1+var_D timeout 60 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b_varD --batches 1 --out $R > $R/engine_1b_varD.log 2>&1)
timeout 60 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag 1b_again --batches 1 --out $R > $R/engine_1b_again.log 2>&1
echo "1b done at $((SECONDS-T0)) s" >> $R/times.txt
rm -rf /tmp/m1b
timeout 150 python3 -m tools.random_llama --size llama-3-8b --out /tmp/m8b --dtype bfloat16 --device cuda > $R/m8b.log 2>&1
timeout $((575-SECONDS+T0)) python3 perf/bench_engine.py --model-dir /tmp/m8b --tag 8b --batches 1 --out $R > $R/engine_8b.log 2>&1
echo "8b rc $? at $((SECONDS-T0)) s" >> $R/times.txt
tar czf $OUT/res.tgz -C $OUT res
