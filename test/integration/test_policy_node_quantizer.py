"""quantizer_node: parameter handling and progress reporting over DDS (pipeline replaced by a stand-in).

The real pipeline is exercised by the quant tests; here a stand-in with the same call signature logs on
the pipeline's logger, so the node's log-record forwarding, start/done/failed events and shutdown are real.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from actquant_ros.transport.loopback import use_loopback_config

use_loopback_config()

from actquant_core import constants as C  # noqa: E402
from actquant_ros.msgs import String  # noqa: E402
from actquant_ros.quantizer_node import QuantizerConfig, QuantizerNode  # noqa: E402
from actquant_ros.transport import QOS_DEFAULT, ParameterError, make_node  # noqa: E402

DOMAIN = 20 + os.getpid() % 30
WAIT_S = 10.0


@pytest.mark.parametrize("kw, needle", [
    ({"checkpoint": ""}, "checkpoint is required"),
    ({"out": "x.bin"}, "must end with .gguf"),
    ({"bpw": 0.0}, "bpw=0.0"),
    ({"method": "magic"}, "method='magic'"),
    ({"device": "tpu"}, "device='tpu'"),
])
def test_config_validation(kw, needle):
    base = {"checkpoint": "random:pi05-tiny", "calib": "demos", "out": "o.gguf"} | kw
    with pytest.raises(ValueError, match=needle):
        QuantizerConfig(**base)


def test_parameters_from_ros_args():
    node = make_node(C.QUANTIZER_NODE_NAME, backend="dds", domain_id=DOMAIN,
                     argv=["--ros-args", "-p", "checkpoint:=random:pi05-tiny", "-p", "calib:=/d", "-p", "out:=/o/p.gguf",
                           "-p", "bpw:=2.5", "-p", "method:=rtn"])
    try:
        cfg = QuantizerConfig.from_node(node)
    finally:
        node.shutdown()
    assert (cfg.bpw, cfg.method, cfg.scope, cfg.out) == (2.5, "rtn", "backbone", "/o/p.gguf")
    node = make_node(C.QUANTIZER_NODE_NAME, backend="dds", domain_id=DOMAIN, argv=["--ros-args", "-p", "bpw:=fast"])
    try:
        with pytest.raises(ParameterError):
            QuantizerConfig.from_node(node)
    finally:
        node.shutdown()


class _Summary:
    def __init__(self, out):
        self.out = out

    def summary(self):
        return {"gguf": self.out, "bpw_backbone": 3.0}


@pytest.mark.parametrize("fail", [False, True])
def test_progress_events(fail):
    calls = []

    def fake_quantize(checkpoint, calib, bpw, method, out_path, plan, **kw):
        calls.append((checkpoint, calib, bpw, method, out_path, plan))
        logging.getLogger("actquant_core.quant.pipeline").info("stage calibrate: %d frames", 8)
        if fail:
            raise ValueError("empty calibration set")
        return _Summary(out_path)

    cfg = QuantizerConfig(checkpoint="random:pi05-tiny", calib="/d", out="/o/p.gguf", bpw=3.0)
    node = make_node("qn_test", backend="dds", domain_id=DOMAIN, argv=[])
    listener = make_node("qn_listener", backend="dds", domain_id=DOMAIN, argv=[])
    events = []
    listener.create_subscription(String, f"/qn_test/progress", lambda m: events.append(json.loads(m.data)), QOS_DEFAULT)
    listener.spin_in_thread()
    qn = QuantizerNode(node, cfg, quantize_fn=fake_quantize)
    deadline = time.monotonic() + WAIT_S
    while qn._pub.subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        qn.start()
        node.spin()  # returns when the run shuts the node down (exit_when_done)
        deadline = time.monotonic() + WAIT_S
        want = "failed" if fail else "done"
        while not any(e["event"] == want for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        node.shutdown()
        listener.shutdown()
    assert calls == [("random:pi05-tiny", "/d", 3.0, "actquant", "/o/p.gguf", None)]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == ("failed" if fail else "done"), kinds
    assert any(e["event"] == "log" and "8 frames" in e["message"] for e in events)
    if fail:
        assert "empty calibration set" in events[-1]["error"] and qn.error is not None
    else:
        assert events[-1]["summary"]["gguf"] == "/o/p.gguf" and qn.error is None


def test_real_pipeline_through_launch_command(tmp_path):
    """launch/quantize.launch.py's command, real pipeline (random pi05-tiny, generated calibration bag):
    progress arrives over DDS, the GGUF + plan + report are written and the GGUF runs natively."""
    import subprocess
    import sys

    import numpy as np

    from test_policy_node_support import PYTHON, ROOT, START_Q, subprocess_env

    sys.path.insert(0, str(ROOT / "launch"))
    from actquant_launch_common import quantize_cmd

    from actquant_core.runtime import load_runtime
    from actquant_core.sim.episodes import Episode, write_bag

    rng = np.random.default_rng(0)
    t = 12
    state = (np.array(START_Q + (0.5,)) + 0.05 * rng.standard_normal((t, 7))).astype(np.float32)
    ep = Episode(instruction="pick the cube", images={c: rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8) for c in C.SIM_CAMERAS},
                 state=state, action=state.copy(), fps=10.0)
    write_bag(tmp_path / "calib" / "episode_000000", ep, "mcap", chunk=4)
    out = tmp_path / "out" / "tiny-q.gguf"
    # pi05-tiny rows (32..128) are too short for K-quants: the cheapest feasible type is Q8_0 (8.5 bpw)
    domain = DOMAIN + 1
    listener = make_node("quant_listener", backend="dds", domain_id=domain, argv=[])
    events = []
    listener.create_subscription(String, "/quantizer_node/progress", lambda m: events.append(json.loads(m.data)), QOS_DEFAULT)
    listener.spin_in_thread()
    try:
        cmd = quantize_cmd({"checkpoint": "random:pi05-tiny", "calib": str(tmp_path / "calib"), "out": str(out), "bpw": 9.0,
                            "calib_frames": 8, "threads": 1}, python=PYTHON)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(domain), cwd=str(ROOT))
        deadline = time.monotonic() + WAIT_S
        while not any(e["event"] == "done" for e in events) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.shutdown()
    assert r.returncode == 0, r.stderr[-3000:]
    done = [e for e in events if e["event"] == "done"]
    assert done and done[0]["summary"]["gguf"] == str(out) and done[0]["summary"]["bpw_backbone"] <= 9.0
    assert any(e["event"] == "log" for e in events)
    assert out.exists() and out.with_suffix("").with_suffix(".plan.yaml").exists()
    rt = load_runtime(out, n_threads=1)
    assert rt.config.camera_slots[0] == C.SIM_CAMERA_BASE
