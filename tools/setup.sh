#!/usr/bin/env bash
# Sets up everything `make serve` and `make test` need, idempotently:
#   .venv with requirements.txt, tritonserver 2.51 (+ Python backend) from the nvidia-pytriton wheel,
#   this project installed in editable mode, and the default model in models/default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-done

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ requirements.txt -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "== installing Python packages"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  # Only the server files of this wheel are used; its own Python API would pin numpy<2 etc.
  "$VENV/bin/python" -m pip install -q --no-deps nvidia-pytriton==0.7.0
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$STAMP"
fi

# perf_analyzer (from tritonclient 2.51) needs these two libraries under their SONAMEs.
LIBS=$("$VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')/nvidia_pytriton.libs
mkdir -p "$VENV/lib/perf_analyzer"
ln -sf "$(ls "$LIBS"/libb64-*.so.0d | head -1)" "$VENV/lib/perf_analyzer/libb64.so.0d"
ln -sf "$(ls "$LIBS"/libcudart-*.so.12* | head -1)" "$VENV/lib/perf_analyzer/libcudart.so.12"

MODEL=${DEFAULT_MODEL_DIR:-models/default}
if [ ! -f "$MODEL/config.json" ]; then
  echo "== building the default model (seeded random weights, Llama architecture) in $MODEL"
  "$VENV/bin/python" -m tools.random_llama --size "${DEFAULT_MODEL_SIZE:-small}" --out "$MODEL"
fi
echo "== setup done"
