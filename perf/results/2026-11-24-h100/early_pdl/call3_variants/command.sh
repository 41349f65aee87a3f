#!/usr/bin/env bash
# session 19 call 3: the write->attention GPU test (and that it fails on a planted bug); which
# other kernels gain from signalling at their start (var_B: RMSNorm, var_C: RMSNorm + split-K sum)
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; { lscpu; nproc; } > $R/cpu.txt 2>&1
T0=$SECONDS
timeout 120 python3 -m pytest -q tests/kernels/test_kernels_attention.py -k "after_the_cache or gpu_decode" > $R/test_new.txt 2>&1
echo "test rc $? at $((SECONDS-T0)) s" >> $R/times.txt
(cd var_bug && timeout 100 python3 -m pytest -q tests/kernels/test_kernels_attention.py -k after_the_cache > $R/test_planted_bug.txt 2>&1)
echo "planted-bug test rc $? (must be 1) at $((SECONDS-T0)) s" >> $R/times.txt
timeout 120 python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/m1b.log 2>&1
for i in 1 2; do
  GIT_COMMIT=fc11fba timeout 90 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag A_$i --batches 1 --out $R > $R/engine_A_$i.log 2>&1
  for v in B C; do
    (cd var_$v && GIT_COMMIT=fc11fba+var_$v timeout 90 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag ${v}_$i --batches 1 --out $R > $R/engine_${v}_$i.log 2>&1)
  done
  echo "engine round $i done at $((SECONDS-T0)) s" >> $R/times.txt
done
tar czf $OUT/res.tgz -C $OUT res
