# device call, code = 32a91a1 + the merge kernel reading every split's accumulator with m when
# there are <= 8 splits (not kept):
python3 -m pytest -q tests/kernels/test_kernels_attention.py
python3 perf/bench_scheduler.py --out $R
python3 perf/profile_steps.py --model-dir /tmp/m1b --chunk 224 --out $R
python3 perf/bench_kernels.py --only decode --out $R
