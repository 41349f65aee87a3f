# device call 2 (base_tree = git archive 153f176 of engine/ kernels/ tools/ perf/bench_engine.py,
# with this commit's perf/diag_step_gaps.py copied in); code = the WIP tree of call 1
export GIT_COMMIT=${GIT_COMMIT:-dirty} PYTHONUNBUFFERED=1; R=$OUT/r; mkdir -p $R
[ -d /tmp/m1b ] || python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > /dev/null 2>&1
timeout 60 python3 -m pytest -x -q tests/kernels/test_kernels_linear.py -k "norm_linear_op" 2>&1 | grep -E "Error|assert|rel_err|passed|failed" | head -30 > $R/norm_test.txt
timeout 150 python3 -m pytest -q tests/kernels/test_kernels_attention.py tests/kernels/test_kernels_elementwise.py tests/engine/test_sampler.py 2>&1 | tail -4 > $R/gpu_tests.txt
timeout 100 python3 perf/diag_step_gaps.py --model-dir /tmp/m1b --out $R --tag new > $R/gaps_new.log 2>&1
(cd base_tree && timeout 100 python3 perf/diag_step_gaps.py --model-dir /tmp/m1b --out $R --tag base > $R/gaps_base.log 2>&1)
timeout 120 python3 perf/bench_kernels.py --only decode --out $R > $R/bench_kernels.log 2>&1
timeout 200 python3 perf/bench_small_linear.py --layer-chain --sizes 1b --deadline 140 --out $R > $R/chain.log 2>&1
