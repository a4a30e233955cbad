"""One real LIBERO episode end to end: tiny random pi0.5 GGUF (native runtime, this venv) -> env server in the
LIBERO venv (real robosuite scene, EGL rendering) over the Unix socket.  Success is not expected.

Run with ``python -m pytest test/integration/test_libero_episode.py -m slow``; needs the LIBERO venv
(``actquant_core/libero/setup_venv.sh``), else skipped.  ``ACTQUANT_LIBERO_MAX_STEPS`` (default 40) caps the
policy-driven steps (a full libero_spatial episode is 220 steps, ~1-3 min on 2 shared cores).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from actquant_core.libero.client import default_libero_python

pytestmark = pytest.mark.slow

LIBERO_PYTHON = default_libero_python()
MAX_STEPS = int(os.environ.get("ACTQUANT_LIBERO_MAX_STEPS", "40"))


def _export_tiny_libero_pi05(path: Path) -> Path:
    """pi05-tiny with random weights and LIBERO-shaped norm stats (state 8-d, actions 7-d)."""
    pytest.importorskip("torch")
    from actquant_core.export import export_pi05
    from actquant_core.policies.common.normalize import FeatureStats, NormStats
    from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
    from actquant_core.policies.pi05.config import get_preset
    from actquant_core.policies.pi05.model import Pi05Model

    def stats(lo, hi) -> FeatureStats:
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        return FeatureStats(mean=(lo + hi) / 2, std=(hi - lo) / 2, q01=lo, q99=hi)

    state = stats([-0.5, -0.5, 0.0, -3.2, -3.2, -3.2, -0.05, -0.05], [0.5, 0.5, 1.5, 3.2, 3.2, 3.2, 0.05, 0.05])
    actions = stats([-0.3] * 6 + [-1.0], [0.3] * 6 + [1.0])  # LIBERO delta-eef actions, gripper -1 open / +1 close
    model = Pi05Model(get_preset("pi05-tiny")).init_random(0).eval()
    export_pi05(model, path, norm_stats=NormStats(state=state, actions=actions),
                tokenizer_model=SentencePieceTokenizer.small().model_bytes)
    return path


@pytest.mark.skipif(not Path(LIBERO_PYTHON).exists(),
                    reason=f"LIBERO venv absent ({LIBERO_PYTHON}); create it with actquant_core/libero/setup_venv.sh")
def test_one_libero_spatial_episode_with_tiny_pi05(tmp_path):
    from actquant_core.libero.evaluate import LiberoEvalConfig, evaluate

    gguf = _export_tiny_libero_pi05(tmp_path / "tiny.gguf")
    cfg = LiberoEvalConfig(gguf=str(gguf), suite="libero_spatial", tasks=("0",), episodes=1, max_steps=MAX_STEPS,
                           libero_python=LIBERO_PYTHON, threads=1, server_log=str(tmp_path / "server.log"))
    t0 = time.time()
    res = evaluate(cfg)
    wall = time.time() - t0
    (tmp_path / "eval.json").write_text(json.dumps(res, indent=1))
    (ep,) = res["episodes"]
    assert ep["task"].startswith("libero_spatial/pick_up_the_black_bowl")
    assert ep["init_index"] == 0
    assert res["env_server"]["libero_version"] == "0.1.1" and res["env_server"]["robosuite_version"] == "1.4.0"
    if not ep["success"]:  # a random policy: the episode runs to the step limit
        assert ep["steps"] == MAX_STEPS
    # pi05-tiny has 4 actions per chunk (< openpi's replan 5): one call per 4 steps
    assert ep["policy_calls"] == -(-ep["steps"] // 4)
    assert res["protocol"]["name"] == "openpi" and res["overall"]["episodes"] == 1
    assert "env libero_spatial/0 (256 px, seed 7)" in (tmp_path / "server.log").read_text()  # openpi env seed
    print(f"LIBERO episode: {ep['steps']} steps, {ep['policy_calls']} policy calls, {wall:.1f} s wall")
