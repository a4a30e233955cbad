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
