#!/usr/bin/env bash
# Real-size π₀.₅ on the GPU machine (device tool; carry .carry/wheels .cache/sdist, run from the repo root).
#   bash bench/device_cuda.sh build      CUDA build of the native module into actquant_core/ (kept on a warm machine)
#   bash bench/device_cuda.sh latency    bench/pi05_latency.py: native CUDA per weight type vs torch bf16 on the GPU
#   bash bench/device_cuda.sh pipeline   bench/actquant_pipeline.py: ActQuant wall time, real size, 256 frames
#   bash bench/device_cuda.sh pipeline-bg  the same, started in its own session (ARGS=...), collected by `wait`
#   bash bench/device_cuda.sh spy        py-spy stacks of the running pipeline-bg (where its time goes)
#   bash bench/device_cuda.sh wait       waits (LIMIT_S) for pipeline-bg's JSON; log + JSON to $OUT
#   bash bench/device_cuda.sh gpu-tests  the gpu-marked tests (CUDA parity, CUDA graph replay) of test/native
#   bash bench/device_cuda.sh sim-table  bench/sim_table.py on the machine's 16 CPU cores (CPU build, EGL rendering;
#        carry .gl too): POLICY=<trained folder> METHODS=a,b BPW=4,3 EPISODES=2 NAME=<json name>; rows are kept in
#        .devrun/<NAME> and resumed by the next call on a warm machine (LIMIT_S bounds one call)
#   bash bench/device_cuda.sh sim-tables several sim-table runs in parallel (JOBS, see below), results in sim_tables.tgz
# Results (JSON + logs) in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/pylib .carry/wheels/*.whl 2>/dev/null
export PYTHONPATH=$PWD:/tmp/pylib PYTHONUNBUFFERED=1
t0=$(date +%s)
build() {
  ls actquant_core/_native*312*.so >/dev/null 2>&1 && grep -q "GGML_CUDA:BOOL=ON" .devrun/build-cuda/CMakeCache.txt 2>/dev/null \
    && { echo "cuda build: present"; return 0; }
  # The image's default g++ (/opt/gcc) links its own libstdc++ and crashes beside the system one: system compilers.
  CC=/usr/bin/gcc CXX=/usr/bin/g++ ACTQUANT_CACHE_DIR=$PWD/.cache cmake -S native -B .devrun/build-cuda \
    -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_HOST_COMPILER=/usr/bin/g++ \
    -DPython_EXECUTABLE=$(which python3) -DACTQUANT_NATIVE_OUTPUT_DIR=$PWD/actquant_core > "$OUT/cuda_build.log" 2>&1 \
    && nice cmake --build .devrun/build-cuda --target _native -j ${BUILD_JOBS:-16} >> "$OUT/cuda_build.log" 2>&1
  local rc=$?; echo "cuda build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/cuda_build.log"; return $rc
}
cpu_build() {
  ls actquant_core/_native*312*.so >/dev/null 2>&1 && [ -f .devrun/build-cpu/CMakeCache.txt ] \
    && { echo "cpu build: present"; return 0; }
  CC=/usr/bin/gcc CXX=/usr/bin/g++ ACTQUANT_CACHE_DIR=$PWD/.cache cmake -S native -B .devrun/build-cpu \
    -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(which python3) -DACTQUANT_NATIVE_OUTPUT_DIR=$PWD/actquant_core \
    > "$OUT/cpu_build.log" 2>&1 && cmake --build .devrun/build-cpu --target _native -j 16 >> "$OUT/cpu_build.log" 2>&1
  local rc=$?; echo "cpu build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/cpu_build.log"; return $rc
}
sim_prep() {  # CPU build, EGL rendering, the calibration demos (kept on a warm machine)
  cpu_build || return 1
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json MUJOCO_GL=egl
  [ -f .devrun/calib/demos_report.json ] || python3 -m actquant_core.sim.demos --suite all --episodes-per-task 1 \
    --seed 1000 --out .devrun/calib --workers 15 --formats lerobot 2>&1 | tail -1 | cut -c1-200
}
case "${1:-}" in
  build) build ;;
  latency)
    build || exit 1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
    timeout ${LIMIT_S:-540} python3 bench/pi05_latency.py --preset pi05 --device cuda --threads 16 --reps 10 \
      --types ${TYPES:-bf16,f16,q8_0,q4_K,q3_K,q2_K} --torch-dtypes bfloat16 --kernel-profile ${LAT_ARGS:-} \
      --out "$OUT/${LAT_NAME:-pi05_latency_real_cuda.json}" 2>&1 \
      | grep -v -i "warn" ;;
  pipeline)
    build || exit 1
    timeout ${LIMIT_S:-540} python3 bench/actquant_pipeline.py --preset pi05 --frames ${FRAMES:-256} --device cuda \
      --threads 16 --out "$OUT/actquant_pipeline_real_cuda.json" 2>&1 | grep -v -i "warn\|eligibility" ;;
  pipeline-bg)
    # A pipeline longer than one call: started in its own session (it outlives the call on a warm machine);
    # `wait` collects it. ARGS: extra actquant_pipeline.py arguments (e.g. "--stage2 best").
    # the pipeline uses GGML's CPU quantizers only (torch does the GPU work): any build of the module serves
    ls actquant_core/_native*312*.so >/dev/null 2>&1 || cpu_build || exit 1
    # It runs from a copy of the tree (/tmp/pipetree), so a CUDA build may replace this tree's module meanwhile
    # (on a machine of two GPUs: CUDA_VISIBLE_DEVICES=0 for the pipeline, 1 for build/gpu-tests/latency).
    mkdir -p .devrun/pipe /tmp/pipetree; rm -f .devrun/pipe/*; repo=$PWD
    tar --exclude=./.devrun --exclude=./.git --exclude=./.carry -cf - . | tar -xf - -C /tmp/pipetree
    (cd /tmp/pipetree && PYTHONPATH=/tmp/pipetree:/tmp/pylib setsid nohup python3 bench/actquant_pipeline.py \
      --preset pi05 --frames ${FRAMES:-256} --device cuda --threads ${PIPE_THREADS:-16} ${ARGS:-} \
      --out "$repo/.devrun/pipe/actquant_pipeline_real_cuda.json" > "$repo/.devrun/pipe/log" 2>&1 < /dev/null &)
    sleep ${WAIT_S:-5}; grep -v -i "warn\|eligib" .devrun/pipe/log | tail -5 ;;
  wait)
    # CUDA_VISIBLE_DEVICES as the pipeline's: nvidia-smi names the card it ran on
    end=$(( $(date +%s) + ${LIMIT_S:-540} ))
    while [ ! -f .devrun/pipe/actquant_pipeline_real_cuda.json ] && [ $(date +%s) -lt $end ] \
      && pgrep -f actquant_pipeline.py >/dev/null; do sleep 5; done
    grep -v -i "warn\|eligib" .devrun/pipe/log | tail -25; nvidia-smi --query-gpu=name --format=csv,noheader
    cp .devrun/pipe/* "$OUT/" 2>/dev/null ;;
  spy)
    # where a running pipeline-bg spends its time: py-spy stacks of every thread (py-spy wheel in .carry/wheels)
    pid=$(pgrep -f "bench/actquant_pipeline.py" | head -1)
    [ -n "$pid" ] && /tmp/pylib/bin/py-spy dump --pid "$pid" 2>&1 | head -${SPY_LINES:-80}
    grep -v -i "warn\|eligib" .devrun/pipe/log | tail -8; top -bn1 | head -15 ;;
  gpu-tests)
    build || exit 1
    timeout ${LIMIT_S:-300} python3 -m pytest -q -m gpu test/native -p no:cacheprovider 2>&1 | tail -15 ;;
  sim-table)
    sim_prep || exit 1
    NAME=${NAME:-sim_table.json}; mkdir -p .devrun/tables
    timeout ${LIMIT_S:-540} python3 bench/sim_table.py --checkpoint "$POLICY" --calib .devrun/calib/lerobot \
      --methods "$METHODS" --bpw "${BPW:-4,3.5,3,2.5,2.25}" --episodes "${EPISODES:-2}" --workers 15 --quant-threads 16 \
      --work ".devrun/work-$(basename "$POLICY")" --reuse --resume --out ".devrun/tables/$NAME" 2>&1 \
      | grep -v -i "warn\|eligib\|INFO"
    cp ".devrun/tables/$NAME" "$OUT/" ;;
  sim-tables)
    # Several sim-table runs at once on a many-core machine (nvidia-h100-x4: 64 cores). JOBS is a ';' list of
    # POLICY|METHODS|BPW|NAME|SKIP_FP (SKIP_FP 1 = no full-precision row); COPY_POLICY=<folder> first copies a
    # trained folder to .devrun/pol/ (kept on a warm machine, so a later call can run it without carrying it).
    sim_prep || exit 1
    [ -n "${COPY_POLICY:-}" ] && mkdir -p .devrun/pol && cp -r "$COPY_POLICY" .devrun/pol/
    mkdir -p .devrun/tables .devrun/logs
    IFS=';' read -ra specs <<< "$JOBS"
    w=$(( ($(nproc) - 4) / ${#specs[@]} )); [ $w -lt 1 ] && w=1
    echo "$(nproc) cores, ${#specs[@]} jobs x $w workers"
    for s in "${specs[@]}"; do
      IFS='|' read -r pol meth bpw name skipfp <<< "$s"
      ( OMP_NUM_THREADS=$w timeout ${LIMIT_S:-540} python3 bench/sim_table.py --checkpoint "$pol" --calib .devrun/calib/lerobot \
          --methods "$meth" --bpw "$bpw" --episodes "${EPISODES:-2}" --workers $w --quant-threads $w \
          $([ "$skipfp" = 1 ] && echo --skip-fp) --work ".devrun/work-$(basename "$pol")" --reuse --resume \
          --out ".devrun/tables/$name" > ".devrun/logs/$name.log" 2>&1
        echo "$name: rc=$? $(grep -c '"method"' ".devrun/tables/$name" 2>/dev/null) rows" ) &
    done
    wait
    tar czf "$OUT/sim_tables.tgz" .devrun/tables .devrun/logs ;;
  *) echo "usage: $0 build|latency|pipeline|pipeline-bg|wait|spy|gpu-tests|sim-table|sim-tables"; exit 2 ;;
esac
echo "device_cuda.sh $1: $(( $(date +%s) - t0 )) s"
