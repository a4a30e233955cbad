#!/usr/bin/env bash
# bench/sim_table.py on the GPU machine's 16 CPU cores (device tool; carry .gl .carry/wheels .cache/sdist).
# Builds the native module there (CPU backend, system compilers), generates calibration demos, then runs the
# table. Usage: bash bench/device_sim_table.sh METHODS BPWS EPISODES
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --target /tmp/pylib .carry/wheels/*.whl
export PYTHONPATH=$PWD:/tmp/pylib MUJOCO_GL=egl PYTHONUNBUFFERED=1
t0=$(date +%s)
CC=/usr/bin/gcc CXX=/usr/bin/g++ ACTQUANT_CACHE_DIR=$PWD/.cache cmake -S native -B /tmp/build-cpu \
  -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(which python3) -DACTQUANT_NATIVE_OUTPUT_DIR=$PWD/actquant_core \
  > /tmp/build.log 2>&1 && cmake --build /tmp/build-cpu --target _native -j 16 >> /tmp/build.log 2>&1 || { tail -20 /tmp/build.log; exit 1; }
echo "native build: $(( $(date +%s) - t0 )) s"
python3 -m actquant_core.sim.demos --suite all --episodes-per-task 2 --out /tmp/calib --workers 14 --formats lerobot \
  --seed 500 2>&1 | tail -1
timeout 470 python3 bench/sim_table.py --calib /tmp/calib/lerobot --methods "${1:-actquant,rtn}" --bpw "${2:-3,2.5}" \
  --episodes "${3:-2}" --workers 15 --calib-frames 128 --work /tmp/simtable --out "$OUT/sim_table.json" 2>&1 \
  | grep -v "INFO\|Warning\|warn" | tail -20
echo "total: $(( $(date +%s) - t0 )) s"
