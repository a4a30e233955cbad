"""Image / JointState latency over the DDS transport (slow; run with ``-m slow``).

Measures, and writes to ``$ACTQUANT_DDS_LATENCY_JSON`` when set:
  - stock cyclonedds ``IdlStruct`` (de)serialisation of a 224x224x3 Image vs the fast bytes codec;
  - cross-process one-way latency (publisher stamp -> subscriber callback, same host clock) for
    224x224x3 Image and 6-joint JointState at 30 Hz on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from actquant_ros.transport.loopback import use_loopback_config

ROOT = Path(__file__).resolve().parents[2]
use_loopback_config()

from actquant_ros import convert as V  # noqa: E402
from actquant_ros import msgs as M  # noqa: E402
from actquant_ros.cdr_codec import decode_image, encode_image  # noqa: E402
from actquant_ros.transport import QOS_DEFAULT, make_node  # noqa: E402

log = logging.getLogger(__name__)
DOMAIN = 100 + (os.getpid() + 25) % 100
N_SAMPLES = 200
# The fast path must beat the stock path by at least this factor (typical: several hundred).
MIN_SPEEDUP = 10.0

PUBLISHER_SRC = """
import sys, time
import numpy as np
from actquant_ros import convert as V, msgs as M
from actquant_ros.transport import make_node, QOS_DEFAULT
node = make_node("lat_pub", backend="dds", argv=sys.argv[1:])
n = node.declare_parameter("n", 200)
img_pub = node.create_publisher(M.Image, "/lat/image", QOS_DEFAULT)
js_pub = node.create_publisher(M.JointState, "/lat/joint_states", QOS_DEFAULT)
deadline = time.monotonic() + 30
while not (img_pub.subscription_count() and js_pub.subscription_count()) and time.monotonic() < deadline:
    node.spin_once(0.01)
time.sleep(0.5)
rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
names = ["j%d" % i for i in range(6)]
for k in range(n):
    img_pub.publish(V.numpy_to_image(rgb, stamp_ns=time.time_ns(), frame_id=str(k)))
    time.sleep(0.015)
    js_pub.publish(V.numpy_to_joint_state(names, np.full(6, float(k)), stamp_ns=time.time_ns()))
    time.sleep(0.018)
time.sleep(0.5)
node.shutdown()
"""


def _timeit(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


@pytest.mark.slow
def test_image_latency_report():
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    msg = V.numpy_to_image(rgb, frame_id="cam")
    payload = encode_image(msg)
    report = {
        "image": "224x224x3 rgb8",
        "stock_serialize_ms": _timeit(msg.serialize, 10),
        "stock_deserialize_ms": _timeit(lambda: M.Image.deserialize(payload), 10),
        "fast_encode_ms": _timeit(lambda: encode_image(msg), 200),
        "fast_decode_ms": _timeit(lambda: decode_image(payload), 200),
        "numpy_to_image_plus_encode_ms": _timeit(lambda: encode_image(V.numpy_to_image(rgb)), 200),
        "decode_plus_image_to_numpy_ms": _timeit(lambda: V.image_to_numpy(decode_image(payload)), 200),
    }
    assert report["stock_serialize_ms"] / report["fast_encode_ms"] > MIN_SPEEDUP

    env = dict(os.environ, PYTHONPATH=str(ROOT), ROS_DOMAIN_ID=str(DOMAIN))
    use_loopback_config(env)
    node = make_node("lat_sub", backend="dds", argv=[], domain_id=DOMAIN)
    img_lat, js_lat = [], []
    node.create_subscription(M.Image, "/lat/image", lambda m: img_lat.append(time.time_ns() - V.time_to_ns(m.header.stamp)), QOS_DEFAULT)
    node.create_subscription(M.JointState, "/lat/joint_states", lambda m: js_lat.append(time.time_ns() - V.time_to_ns(m.header.stamp)), QOS_DEFAULT)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_SRC, "--ros-args", "-p", f"n:={N_SAMPLES}"], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            node.spin_once(0.05)
        node.spin_once(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
        node.shutdown()
    assert proc.returncode == 0, err
    assert len(img_lat) == N_SAMPLES and len(js_lat) == N_SAMPLES
    for key, lat in (("image", img_lat), ("joint_state", js_lat)):
        ms = np.asarray(lat) / 1e6
        report[f"{key}_one_way_ms"] = {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                                       "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "n": int(ms.size)}
    log.info("DDS latency report: %s", json.dumps(report, indent=1))
    out = os.environ.get("ACTQUANT_DDS_LATENCY_JSON")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
