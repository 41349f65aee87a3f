# device call at 21f5cd1 (engine as d2f14be): ShapeBuckets.LONG_CONTEXT_SPLITS set per run by a
# driver that was not committed:
#   import os, runpy, sys; import engine.step_shapes as ss
#   ss.ShapeBuckets.LONG_CONTEXT_SPLITS = int(os.environ["SPLITS"])
#   sys.argv = ["perf/bench_scheduler.py"] + sys.argv[1:]; runpy.run_path("perf/bench_scheduler.py", run_name="__main__")
for s in 4 8 2 4; do SPLITS=$s python3 scratch_splits.py --model-dir /tmp/m1b --skip-prefix --out $R/s$s; done
# (s4/ holds the second 4-split run; the first printed 1.873x, p50 with the prefill 2.466 ms)
