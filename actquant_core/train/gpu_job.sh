#!/usr/bin/env bash
# One GPU-machine job (device tool): demonstrations on its CPUs, pi05-small training on its GPU, and a check
# that the CUDA build of the native module compiles and runs. Reproduces the shipped small policy:
#
#   device run (carry: .gl .carry .cache):  bash actquant_core/train/gpu_job.sh EPISODES_PER_TASK TRAIN_MINUTES
#
# Needs, carried in the working tree: .gl/*.deb (EGL loaders, see README "GPU machine"), .carry/wheels
# (mujoco, mujoco-core, glfw, pyopengl, gguf, pybind11 for the machine's Python 3.12), .cache/sdist (the GGML
# source sdist; CMake extracts it). Optional third argument: a trained policy folder to continue from.
# Results go to $OUT: trained policy folder (sharded), demos report, CUDA check log.
set -uo pipefail
EPT=${1:-30}
MIN=${2:-5}
INIT=${3:-}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --target /tmp/pylib .carry/wheels/*.whl
export PYTHONPATH=$PWD:/tmp/pylib MUJOCO_GL=egl PYTHONUNBUFFERED=1
python3 -c "import torch, mujoco; print('torch', torch.__version__, torch.cuda.get_device_name(), 'mujoco', mujoco.__version__)"

# CUDA build of the native module, in the background while demos and training run.
(
  # The image's default g++ (/opt/gcc) links its own libstdc++ into the module and crashes beside the
  # system one that Python loads: build with the system compilers.
  CC=/usr/bin/gcc CXX=/usr/bin/g++ ACTQUANT_CACHE_DIR=$PWD/.cache \
  cmake -S native -B /tmp/build-cuda -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCMAKE_CUDA_HOST_COMPILER=/usr/bin/g++ -DPython_EXECUTABLE=$(which python3) \
        -DACTQUANT_NATIVE_OUTPUT_DIR=/tmp/native-cuda > "$OUT/cuda_build.log" 2>&1 &&
  nice cmake --build /tmp/build-cuda --target _native -j 6 >> "$OUT/cuda_build.log" 2>&1
  echo "cuda build rc=$?" >> "$OUT/cuda_build.log"
) &
BUILD_PID=$!

t0=$(date +%s)
python3 -m actquant_core.sim.demos --suite all --episodes-per-task "$EPT" --out /tmp/demos --workers 10 \
        --formats lerobot 2>&1 | tail -3
cp /tmp/demos/demos_report.json "$OUT/" 2>/dev/null
echo "demos: $(( $(date +%s) - t0 )) s"
python3 -m actquant_core.train.pi05 --data /tmp/demos/lerobot --out "$OUT/pi05-small-sim" --state-dir /tmp/state \
        --minutes "$MIN" --batch-size 64 ${INIT:+--init-from "$INIT"} 2>&1 | grep -v Warning | tail -12
wait $BUILD_PID
tail -3 "$OUT/cuda_build.log"; mv "$OUT/cuda_build.log" /tmp/
if ls /tmp/native-cuda/_native*.so >/dev/null 2>&1; then
  mkdir -p /tmp/cudapkg/actquant_core && cp /tmp/native-cuda/_native*.so /tmp/cudapkg/actquant_core/
  POLICY_DIR="$OUT/pi05-small-sim" python3 -X faulthandler - <<'PY' 2>&1 | tee "$OUT/cuda_check.txt"
import sys, importlib.util, numpy as np, tempfile, os
so = [os.path.join('/tmp/native-cuda', f) for f in os.listdir('/tmp/native-cuda') if f.startswith('_native')][0]
spec = importlib.util.spec_from_file_location('actquant_core._native', so)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); sys.modules['actquant_core._native'] = mod
from actquant_core import native
from actquant_core.gguf import TensorEntry, write_policy_gguf
print('has_cuda', native.has_cuda(), 'devices', mod.cuda_device_count())
rng = np.random.default_rng(0)
W = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)
x = rng.standard_normal((8, 4096)).astype(np.float32)
p = tempfile.mktemp(suffix='.gguf')
write_policy_gguf(p, 'test', {}, [TensorEntry('w.q4', W, 'Q4_K'), TensorEntry('w.f16', W, 'F16')])
cpu = native.Backend(8, 'cpu'); print('cpu backend', flush=True); gpu = native.Backend(8, 'cuda'); print('gpu backend', gpu.description, flush=True)
mc = native.GgufModel(p, cpu); print('cpu model', flush=True); mg = native.GgufModel(p, gpu); print('gpu model', flush=True)
for n in ('w.q4', 'w.f16'):
    yc = native.mul_mat(mc, cpu, n, x); print('cpu matmul', flush=True); yg = native.mul_mat(mg, gpu, n, x)
    print(n, gpu.description, 'rel diff cpu vs cuda', float(np.linalg.norm(yc - yg) / np.linalg.norm(yc)))
import time
from actquant_core.train.pi05 import load_trained
from actquant_core.export import export_pi05, default_type_for
from actquant_core.runtime.pi05 import Pi05Runtime
from actquant_core.runtime.types import Observation
d = os.environ.get('POLICY_DIR')
cfg, m, ns, tok = load_trained(d)
obs = Observation(images={'base_0_rgb': np.zeros((224, 224, 3), np.uint8), 'left_wrist_0_rgb': np.zeros((224, 224, 3), np.uint8)},
                  state=np.zeros(7), instruction='put the red cube in the bowl')
for t in ('F16', 'Q4_K'):
    g = tempfile.mktemp(suffix='.gguf')
    export_pi05(m, g, type_for=default_type_for(t), norm_stats=ns, tokenizer_model=tok.model_bytes)
    acts = {}
    for dev, th in (('cuda', 8), ('cpu', 16)):
        rt = Pi05Runtime(g, n_threads=th, device=dev)
        rt.infer(obs, noise=np.zeros((cfg.action_horizon, cfg.action_dim), np.float32))
        ts = []
        for _ in range(10):
            t0 = time.perf_counter(); c = rt.infer(obs, noise=np.zeros((cfg.action_horizon, cfg.action_dim), np.float32)); ts.append(time.perf_counter() - t0)
        acts[dev] = c.actions
        print(f'pi05-small {t} {rt.backend}: p50 {1e3 * np.median(ts):.1f} ms per chunk')
    print(f'pi05-small {t} cuda vs cpu actions rel diff', float(np.linalg.norm(acts['cuda'] - acts['cpu']) / np.linalg.norm(acts['cpu'])))
PY
fi
rm -f "$OUT/pi05-small-sim/tokenizer.model"  # = actquant_core/assets/tokenizers/robot_small.model (transfer limit)
ls -la "$OUT" "$OUT/pi05-small-sim" 2>/dev/null
