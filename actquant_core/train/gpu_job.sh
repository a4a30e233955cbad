#!/usr/bin/env bash
# One GPU-machine training job (device tool): demonstrations on its CPUs, then pi05-small and
# openvla-oft-small trained side by side on its one GPU (each is launch-bound at this size, so they share
# the GPU well).  Reproduces the shipped small policies:
#
#   device run (carry: .gl .carry .cache/sdist):
#       bash actquant_core/train/gpu_job.sh EPISODES_PER_TASK TRAIN_MINUTES [PI05_INIT_DIR] [OFT_INIT_DIR]
#
# The device tool carries at most 64 MiB of the working tree; with both bundled policies tracked (~63 MB) the
# tree is larger, so move the policy folder the job does not start from out of the tree for the run, e.g.
# `mv actquant_core/assets/policies/openvla-oft-small-sim /tmp/` (and back afterwards).
#
# The whole job ends within $JOB_BUDGET_S seconds (default 560) of its start: training stops early at that
# deadline (minus a margin for saving), so the results always come back before the device's command limit.
#
# Needs, carried in the working tree: .gl/*.deb (EGL loaders, see README "GPU machine") and .carry/wheels
# (mujoco, mujoco-core, glfw, pyopengl for the machine's Python 3.12).  PI05_INIT_DIR / OFT_INIT_DIR: trained
# folders to continue from ("-" = none; pi05 may come from another image size: its position embedding is
# resampled).  Results in $OUT: policies.tar.part-* (both folders; reassemble with `cat policies.tar.part-* | tar x`),
# demos_report.json, train logs.
#
# Continuing on a warm machine: with WORK=<dir> (default /tmp/aqjob; use an ignored folder of the repo root,
# e.g. .devrun, which the device keeps between calls while the machine stays warm) a second call finds the
# demonstrations and both trainers' states there, skips the demos and resumes both runs (optimizer, EMA and
# step count kept; the cosine restarts over the new time box).  The init dirs are then ignored.
# TRAIN=pi05 or TRAIN=oft trains one policy only (it then has the GPU to itself).  QD_MAX=0.9 caps the
# expert's joint speed (sim.demos --qd-max); unset = the data the bundled policies were trained on.
# ACTION_NOISE=0.04 records DART-perturbed demonstrations (sim.demos --action-noise; labels stay the expert's).
# The trainers keep the decoded frames in $WORK/frame_cache (read_episodes_at's cache), so a resumed call
# starts training within seconds instead of decoding the dataset again (~3 min for 117 k frames).
set -uo pipefail
T_START=$(date +%s)
DEADLINE=$(( T_START + ${JOB_BUDGET_S:-560} - 25 ))
EPT=${1:-60}
MIN=${2:-7}
PI_INIT=${3:--}
OFT_INIT=${4:--}
OUT=${OUT:-/tmp/out}
WORK=$(realpath -m "${WORK:-/tmp/aqjob}")
mkdir -p "$OUT" "$WORK"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --target /tmp/pylib .carry/wheels/*.whl
export PYTHONPATH=$PWD:/tmp/pylib MUJOCO_GL=egl PYTHONUNBUFFERED=1
export ACTQUANT_FRAME_CACHE=$WORK/frame_cache  # decoded frames, memory-mapped by a resumed call
python3 -c "import torch, mujoco; print('torch', torch.__version__, torch.cuda.get_device_name(), 'mujoco', mujoco.__version__)"

t0=$(date +%s)
if [ -f "$WORK/demos/demos_report.json" ]; then
    echo "demos: reusing $WORK/demos"
else
    python3 -m actquant_core.sim.demos --suite all --episodes-per-task "$EPT" --out "$WORK/demos" --workers 15 \
            --formats lerobot --no-compress ${QD_MAX:+--qd-max "$QD_MAX"} \
            ${ACTION_NOISE:+--action-noise "$ACTION_NOISE"} 2>&1 | tail -1 | cut -c1-300
fi
cp "$WORK/demos/demos_report.json" "$OUT/" 2>/dev/null
echo "demos: $(( $(date +%s) - t0 )) s"
mkdir -p "$WORK/policies"
PI_ARGS=(); OFT_ARGS=()
if [ -f "$WORK/state-pi05/train_state.pt" ]; then PI_ARGS=(--resume); elif [ "$PI_INIT" != "-" ]; then PI_ARGS=(--init-from "$PI_INIT"); fi
if [ -f "$WORK/state-oft/train_state_oft.pt" ]; then OFT_ARGS=(--resume); elif [ "$OFT_INIT" != "-" ]; then OFT_ARGS=(--init-from "$OFT_INIT"); fi
echo "pi05 args: ${PI_ARGS[*]}   oft args: ${OFT_ARGS[*]}"
TRAIN=${TRAIN:-both}  # both | pi05 | oft
P1=""; P2=""
[ "$TRAIN" != oft ] && { python3 -m actquant_core.train.pi05 --data "$WORK/demos/lerobot" --out "$WORK/policies/pi05-small-sim" \
        --state-dir "$WORK/state-pi05" --minutes "$MIN" "${PI_ARGS[@]}" --delta-action-dims 6 --load-workers 7 --deadline $DEADLINE \
        > "$WORK/train_pi05.log" 2>&1 &
P1=$!; }
[ "$TRAIN" != pi05 ] && { python3 -m actquant_core.train.openvla_oft --data "$WORK/demos/lerobot" --out "$WORK/policies/openvla-oft-small-sim" \
        --state-dir "$WORK/state-oft" --minutes "$MIN" "${OFT_ARGS[@]}" --load-workers 7 --deadline $DEADLINE \
        > "$WORK/train_oft.log" 2>&1 &
P2=$!; }
[ -n "$P1" ] && { wait $P1; echo "pi05 rc=$?"; }
[ -n "$P2" ] && { wait $P2; echo "oft rc=$?"; }
for n in pi05 oft; do [ -f "$WORK/train_$n.log" ] || continue; grep -v Warning "$WORK/train_$n.log" | tail -4 | cut -c1-200; grep -v "step [0-9]* loss" "$WORK/train_$n.log" | tail -30 > "$OUT/train_$n.log"; done
(cd "$WORK/policies" && tar cf - . | split -b 15m - "$OUT/policies.tar.part-")
ls -la "$OUT"; echo "job: $(( $(date +%s) - T_START )) s"
