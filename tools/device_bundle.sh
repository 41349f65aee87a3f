#!/usr/bin/env bash
# Pack what a GPU machine of the device tool lacks for serving into DEST (default .device-bundle/,
# git-ignored), small enough for the device tool's 64 MiB carry limit:
#   tritonserver.tar.xz   tritonserver 2.51 + Python backend with the CPython 3.12 stub in place
#                         (from nvidia-pytriton 0.7.0; the stub must live inside the wheel's tree)
#   perf_analyzer.tar.xz  perf_analyzer 2.51 (from the tritonclient 2.51.0 wheel)
#   wheels/               tritonclient 2.51.0 (binaries stripped), python-rapidjson, for CPython 3.12
#   numpy.tar.xz          numpy 1.26 for CPython 3.12 (the 2.51 Python backend mishandles numpy 2
#                         outputs), the wheel unpacked and xz-compressed: 9 MB instead of the wheel's
#                         18, which kept bundle + repository under the device tool's 64 MiB
# Unpack on the GPU machine with tools/device_unpack.sh.
set -euo pipefail
DEST=${1:-.device-bundle}
# The repository travels with the bundle (tracked files ~22 MB): every MB of the bundle counts.
export XZ_OPT=-9e
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
rm -rf "$DEST"; mkdir -p "$DEST/wheels"
pip download -q --no-deps -d "$work" nvidia-pytriton==0.7.0
pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.12 \
  -d "$work/tc" tritonclient==2.51.0
( cd "$work" && unzip -q nvidia_pytriton-*.whl 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*' \
  && cp pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub pytriton/tritonserver/backends/python/ \
  && tar -cJf tritonserver.tar.xz --exclude='libpython3-*' --exclude='python_backend_stubs' \
       pytriton/tritonserver nvidia_pytriton.libs )
mv "$work/tritonserver.tar.xz" "$DEST/"
( cd "$work/tc" && unzip -q tritonclient-*.whl \
  && tar -cJf ../perf_analyzer.tar.xz tritonclient-2.51.0.data/data/bin/perf_analyzer \
  && zip -q -d tritonclient-*.whl 'tritonclient-2.51.0.data/data/bin/*' )
mv "$work/perf_analyzer.tar.xz" "$DEST/"
cp "$work"/tc/tritonclient-*.whl "$DEST/wheels/"
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST/wheels" \
  python-rapidjson
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work/np" numpy==1.26.4
mkdir "$work/np/site" && ( cd "$work/np/site" && unzip -q ../numpy-*.whl && tar -cJf "$work/numpy.tar.xz" . )
mv "$work/numpy.tar.xz" "$DEST/"
du -sh "$DEST"
