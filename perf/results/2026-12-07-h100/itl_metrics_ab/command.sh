#!/usr/bin/env bash
# stop 22 call C: served throughput with the ITL histogram counted in the model and counters batched
# (7f21754, "new") vs the per-token Triton histogram observe (1da4eb0's triton_metrics.py, "base"),
# alternating three times on one machine, 128 in / 512 out at c128 and c256; the offline engine once.
set -x
export PYTHONUNBUFFERED=1
R=$OUT/res; mkdir -p $R
nvidia-smi -L > $R/gpu.txt; lscpu | head -20 > $R/cpu.txt
source tools/device_unpack.sh >/dev/null 2>&1
M=model_repository/llm/1/triton_metrics.py; cp $M /tmp/new_metrics.py
python3 -m tools.random_llama --size llama-3.2-1b --out /tmp/m1b --dtype bfloat16 --device cuda > $R/build.log 2>&1
GIT_COMMIT=7f21754 python3 perf/bench_offline.py --model-dir /tmp/m1b --shapes 128x512 --concurrency 128,256 --max-model-len 2048 --budget 40 --out $R/offline.json > $R/offline_log.txt 2>&1
A="--shapes 128x512 --concurrency 128,256 --skip offline,perf_analyzer,hf"
for round in 1 2 3; do
  for v in new base; do
    [ $SECONDS -lt 400 ] || continue
    if [ $v = base ]; then cp .device-bundle/base_triton_metrics.py $M; export GIT_COMMIT=1da4eb0; else cp /tmp/new_metrics.py $M; export GIT_COMMIT=7f21754; fi
    DEADLINE=140 BENCH_ARGS="$A" OUT=$R/${v}_$round timeout 160 bash perf/run_gpu_bench.sh > $R/${v}_${round}_stdout.txt 2>&1
  done
done
cp /tmp/new_metrics.py $M
rm -rf $R/*/server $R/*/repo
find $R -name '*_export.json' -delete; find $R -name 'inputs_*.json' -delete
python3 - > $R/summary.txt 2>&1 <<'PY'
import json, glob, os
R = os.environ["OUT"] + "/res"
off = json.load(open(R + "/offline.json"))["metrics"]
print("offline", {k: round(v, 1) for k, v in off.items() if k.endswith("output_tokps") and "c1" in k})
for d in sorted(glob.glob(R + "/*_[123]")):
    if not os.path.isdir(d): continue
    try:
        pts = json.load(open(d + "/loadgen_in128_out512.json"))
    except Exception as e:
        print(os.path.basename(d), "no results", e); continue
    for p in pts:
        m = p["metrics"]
        print(os.path.basename(d), "c%s" % p["config"].get("concurrency"), "tok/s %.0f" % m["output_tokps"],
              "ttft p50 %.1f" % m["ttft_ms_p50"], "tpot %.3f" % m["tpot_ms_mean"],
              "gen %s itl_obs %s req %s" % (m.get("server_generation_tokens"), m.get("server_itl_observations"), m.get("requests_ok")),
              "exec %.2f queue %.1f" % (m.get("server_triton_execute_ms_mean", -1), m.get("server_triton_queue_ms_mean", -1)))
PY
cat $R/summary.txt
tar czf $OUT/res.tgz -C $OUT res
