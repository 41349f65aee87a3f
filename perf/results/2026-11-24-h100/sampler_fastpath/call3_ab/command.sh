# device call 3: batch-1 engine A/B in one call. "." = the WIP tree (sampler fast path + RMSNorm fused
# into the qkv/gate_up linear kernels, attention merge as at 153f176); nofuse_tree = the same with
# the norm fusion switched off in kernels/linear.py; base_tree = git archive 153f176.
export GIT_COMMIT=${GIT_COMMIT:-dirty} PYTHONUNBUFFERED=1; R=$OUT/r; mkdir -p $R
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1 &
timeout 90 python3 -m pytest -x -q --tb=short tests/kernels/test_kernels_linear.py -k "norm_linear_op" > $R/norm_test.txt 2>&1
wait
run() { (cd $1 && timeout 110 python3 perf/bench_engine.py --model-dir /tmp/m1b --tag $2 --batches 1 --out $R 2>&1 | grep -E "batch  |Error|error" | sed "s/^/$2 /" | tee -a $R/engine.log); }
run . new1; run nofuse_tree nofuse1; run base_tree base1; run . new2; run nofuse_tree nofuse2
