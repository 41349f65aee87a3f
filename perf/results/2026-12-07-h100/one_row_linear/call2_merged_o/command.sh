#!/usr/bin/env bash
# session 26, device call 2: one_row_linear (qkv) + the o projection merging the split attention's
# partials (one_row_merged_linear): GPU tests; batch-1 1B A/B LLM_ONE_ROW_LINEAR 1 vs 0 (2 rounds);
# variants, one run each: "no_merge_in_o" (one_row_linear for o too, the merge kernel kept),
# "waves4" (one_row_linear also where up to 8 programs an SM are needed: the 1B down); the 1B step
# interior with everything on.
export PYTHONUNBUFFERED=1; R=$OUT/res; mkdir -p $R/interior_on $R/variants; nvidia-smi -L > $R/gpu.txt
cp gpu_call.sh $R/command.sh
timeout 130 python3 -m pytest -q -x tests/kernels/test_kernels_linear.py tests/engine/test_numerics.py \
  tests/kernels/test_kernels_attention.py -k "projection or merging or gpu_decode or earlier_steps or numerics or linear" > $R/pytest.log 2>&1; echo "pytest rc $?" >> $R/pytest.log
OUT=$R/ab_1b timeout 200 bash perf/ab_env_bs1.sh LLM_ONE_ROW_LINEAR 1 0 2 > $R/ab_1b_stdout.txt 2>&1
M=/tmp/ab_llama-3.2-1b
cp kernels/attention.py /tmp/attention.bak; cp kernels/linear.py /tmp/linear.bak
sed -i 's/    if split and o_proj is not None and num_tokens == 1 and one_row_on():/    if False:/' kernels/attention.py
diff -u /tmp/attention.bak kernels/attention.py > $R/variants/no_merge_in_o.diff
timeout 55 python3 perf/bench_engine.py --model-dir $M --tag no_merge_in_o --batches 1 --out $R/variants > $R/variants/no_merge_in_o.log 2>&1
cp /tmp/attention.bak kernels/attention.py
sed -i 's/^ONE_ROW_PROGRAMS_PER_SM = 2$/ONE_ROW_PROGRAMS_PER_SM = 8/' kernels/linear.py
diff -u /tmp/linear.bak kernels/linear.py > $R/variants/waves4.diff
timeout 55 python3 perf/bench_engine.py --model-dir $M --tag waves4 --batches 1 --out $R/variants > $R/variants/waves4.log 2>&1
cp /tmp/linear.bak kernels/linear.py
timeout 40 python3 perf/diag_step_gaps.py --model-dir $M --out $R/interior_on --interior > $R/interior_on/log.txt 2>&1
tar -C $OUT -cJf $OUT/results.tar.xz res
tail -2 $R/pytest.log; cat $R/ab_1b/summary.txt; grep -h "_tokps\|graph_ms" $R/variants/*.json | grep -v roofline; grep -A12 "inside the graph, per step" $R/interior_on/log.txt
