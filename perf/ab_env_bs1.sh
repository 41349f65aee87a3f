#!/usr/bin/env bash
# Batch-1 decode of one checkpoint with an environment switch on and off, alternating, in one
# device call (machines differ by 10-30%, so an A/B is only meaningful within one run).
#
#   bash perf/ab_env_bs1.sh VAR [ON OFF [ROUNDS]]      e.g.  bash perf/ab_env_bs1.sh LLM_SMALL_LINEAR
#
# VAR=ON and VAR=OFF (default 1 and 0) each run perf/bench_engine.py --batches 1 ROUNDS times
# (default 2) on a random-weight checkpoint built once (SIZE, default llama-3.2-1b; any
# tools/random_llama.py size); JSON and logs go to $OUT (default perf/results/ab), with a summary
# of tok/s and the roofline ratio per run.
set -u
VAR=${1:?usage: ab_env_bs1.sh VAR [ON OFF [ROUNDS]]}; ON=${2:-1}; OFF=${3:-0}; ROUNDS=${4:-2}
OUT=${OUT:-perf/results/ab}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
SIZE=${SIZE:-llama-3.2-1b}
MODEL=${MODEL_DIR:-/tmp/ab_$SIZE}
[ -f "$MODEL/config.json" ] || $PY -m tools.random_llama --size "$SIZE" --out "$MODEL" \
    --dtype bfloat16 --device cuda > "$OUT/model.log" 2>&1 || { echo "checkpoint build failed, see $OUT/model.log"; exit 1; }
for round in $(seq 1 "$ROUNDS"); do
  for value in "$ON" "$OFF"; do
    tag="bs1_${VAR}_${value}_$round"
    env "$VAR=$value" timeout 120 $PY perf/bench_engine.py --model-dir "$MODEL" --tag "$tag" --batches 1 \
        --out "$OUT" > "$OUT/$tag.log" 2>&1 || echo "$tag failed (rc $?), see $OUT/$tag.log"
  done
done
$PY - "$OUT" "$VAR" <<'PYEOF' | tee "$OUT/summary.txt"
import glob, json, os, sys
out, var = sys.argv[1], sys.argv[2]
for path in sorted(glob.glob(os.path.join(out, f"engine_bs1_{var}_*.json"))):
    doc = json.load(open(path))
    tag, m = os.path.basename(path)[len("engine_"):-len(".json")], doc["metrics"]
    print(f"{tag}: {m[f'engine_decode_bs1_{tag}_tokps']:.1f} tok/s, "
          f"{m[f'engine_decode_bs1_{tag}_ratio']:.3f} of the roofline, "
          f"graph {m.get(f'engine_decode_bs1_{tag}_graph_ms', float('nan')):.3f} ms ({doc['device']})")
PYEOF
