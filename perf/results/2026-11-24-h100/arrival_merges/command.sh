#!/usr/bin/env bash
# session 18, device calls 3 and 4. Working tree = 72fcdb0 + arrivals_patch.diff (kernels/arrivals.py is kept here as
# arrivals.py.txt); base_tree = git archive 72fcdb0. The patch as kept includes call 4's DEV_TAIL / DEV_CHUNK
# switches (call 3 ran it without them, i.e. DEV_TAIL=0 and the default merge chunk).
# call 3:
export GIT_COMMIT=72fcdb0+arrivals PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1 &
timeout 230 python3 -m pytest -q -x tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_numerics.py > $R/gpu_tests.txt 2>&1; echo "tests rc=$?" >> $R/gpu_tests.txt
wait
for t in new base; do d=.; [ $t = base ] && d=base_tree; (cd $d && timeout 60 python3 perf/bench_kernels.py --only decode --out $R/kernels_$t > $R/kernels_$t.log 2>&1); done
for round in 1 2; do for t in new base; do d=.; [ $t = base ] && d=base_tree; (cd $d && timeout 70 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag ${t}_$round --batches 1 --out $R 2>&1 | grep -E "batch  |Error|error" | sed "s/^/$t /" >> $R/engine.log); done; done
timeout 60 python3 perf/diag_step_gaps.py --model-dir /tmp/m1b --out $R --tag new --interior > $R/interior_new.log 2>&1
# call 4 (dev_tail.py kept here):
(cd base_tree && timeout 100 python3 ../dev_tail.py base) > $R/tail.log 2>&1
for t in 0 1 2; do DEV_TAIL=$t timeout 100 python3 dev_tail.py tail$t >> $R/tail.log 2>&1; done
DEV_CHUNK=1 timeout 100 python3 dev_tail.py chunk1 >> $R/tail.log 2>&1
