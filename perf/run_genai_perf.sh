#!/usr/bin/env bash
# genai-perf (NVIDIA's LLM benchmark on top of perf_analyzer) against our served model, CPU machines.
#   bash perf/run_genai_perf.sh URL TOKENIZER_DIR [ISL] [OSL] [CONCURRENCY] [ARTIFACT_DIR]
#   e.g. bash perf/run_genai_perf.sh 127.0.0.1:8001 models/default 128 64 4 /tmp/genai-perf
# Installs genai-perf into a throwaway venv (GENAI_PERF_VENV, default /tmp/genai-perf-venv; needs
# PyPI) and drives it with OUR perf_analyzer 2.51 (.venv/bin, same release as the server):
# genai-perf >= 0.0.13 depends on the `perf-analyzer` PyPI package, whose only build for glibc < 2.38
# is an empty placeholder. GENAI_PERF_VERSION picks the version (default 0.0.16; 0.0.8 also works,
# with `--service-kind triton --backend vllm` instead of `--backend vllm --endpoint-type kserve`).
# Not for the GPU machines: no network there, and its dependency closure for CPython 3.12 is ~180 MB
# of wheels (pyarrow alone 53 MB), beyond the device tool's 64 MiB carry. See perf/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
URL=${1:?usage: run_genai_perf.sh URL TOKENIZER_DIR [ISL] [OSL] [CONCURRENCY] [ARTIFACT_DIR]}
TOKENIZER=${2:?tokenizer (model) directory with tokenizer.json + tokenizer_config.json}
ISL=${3:-128}; OSL=${4:-64}; CONC=${5:-4}; ART=${6:-/tmp/genai-perf-artifacts}
VERSION=${GENAI_PERF_VERSION:-0.0.16}
VENV=${GENAI_PERF_VENV:-/tmp/genai-perf-venv}
if [ ! -x "$VENV/bin/genai-perf" ] || ! "$VENV/bin/genai-perf" --version 2>/dev/null | grep -q "$VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "genai-perf==$VERSION"
fi
# genai-perf runs `perf_analyzer` from PATH: ours is in .venv/bin (tritonclient[all]==2.51.0).
export PATH="$VENV/bin:$PWD/.venv/bin:$PATH"
export LD_LIBRARY_PATH="$PWD/.venv/lib/perf_analyzer:/tmp/ts/lib:${LD_LIBRARY_PATH:-}"
perf_analyzer --version >/dev/null || { echo "perf_analyzer cannot run (see perf/README.md)"; exit 2; }
if [[ "$VERSION" == 0.0.8 || "$VERSION" == 0.0.9 || "$VERSION" == 0.0.10 ]]; then
  ENDPOINT=(--service-kind triton --backend vllm)
else
  ENDPOINT=(--backend vllm --endpoint-type kserve)
fi
# --output-tokens-mean-deterministic sends min_tokens = max_tokens, our fixed output length.
# --extra-inputs return_cumulative_logprob:true: perf_analyzer 2.51 otherwise writes uninitialized
# floats for that output into its profile export and, about one run in ten, fails on a NaN (empty
# export, genai-perf: "Input is a zero-length, empty document").
rm -rf "$ART"
genai-perf profile -m llm "${ENDPOINT[@]}" --streaming -u "$URL" --tokenizer "$TOKENIZER" \
  --synthetic-input-tokens-mean "$ISL" --synthetic-input-tokens-stddev 0 \
  --output-tokens-mean "$OSL" --output-tokens-mean-deterministic \
  --extra-inputs return_cumulative_logprob:true \
  --concurrency "$CONC" --measurement-interval 4000 -s 100 --num-prompts 50 --artifact-dir "$ART"
find "$ART" -name 'profile_export_genai_perf.json' -print
