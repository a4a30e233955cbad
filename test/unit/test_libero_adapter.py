"""LIBERO adapter without LIBERO: the wire codec, the protocol mappings, and the whole episode loop against a
fake environment server process that speaks the real protocol over a real Unix domain socket."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from actquant_core.libero import wire
from actquant_core.libero.client import EnvClient, EnvServerConfig, EnvServerError
from actquant_core.libero.evaluate import LiberoEvalConfig, evaluate, select_tasks
from actquant_core.libero.protocols import (
    DUMMY_ACTION,
    OFT,
    OPENPI,
    env_actions,
    get_protocol,
    libero_state,
    policy_image,
    quat_to_axis_angle,
    to_observation,
)
from actquant_core.runtime.types import ActionChunk

ROOT = Path(__file__).resolve().parents[2]
LIBERO_DIR = ROOT / "actquant_core" / "libero"
ATOL_STATE = 1e-6  # float32 state vs float64 reference
ATOL_AXIS_ANGLE = 1e-9


def _frame(msg: wire.Message) -> bytes:
    return wire.encode_message(msg)


# ---------------------------------------------------------------------------------------------------
# wire codec
# ---------------------------------------------------------------------------------------------------


def test_wire_round_trip_all_dtypes_and_shapes():
    rng = np.random.default_rng(0)
    arrays = {
        "img": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        "f64": rng.standard_normal((3, 2)),
        "f32": rng.standard_normal(4).astype(np.float32),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "i32": np.array([[1, -2]], np.int32),
        "i8": np.array([-128, 127], np.int8),
        "flags": np.array([True, False, True]),
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 7)),
        "big_endian": np.arange(4, dtype=">f8"),
        "strided": np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2],
    }
    msg = wire.Message("obs", {"done": True, "language": "put the bowl on the plate", "n": [1, 2]}, arrays)
    out = wire.decode_message(_frame(msg))
    assert out.type == "obs" and out.fields == msg.fields
    assert list(out.arrays) == list(arrays)
    for k, a in arrays.items():
        b = out.arrays[k]
        assert b.shape == np.shape(a), k
        assert b.dtype.newbyteorder("=") == np.asarray(a).dtype.newbyteorder("="), k
        np.testing.assert_array_equal(b, a, err_msg=k)


def test_wire_rejects_bad_version_magic_and_reserved():
    good = bytearray(_frame(wire.Message("hello", {"version": 1})))
    bad = bytearray(good)
    bad[4:6] = (wire.PROTOCOL_VERSION + 1).to_bytes(2, "big")
    with pytest.raises(wire.ProtocolError, match=f"version {wire.PROTOCOL_VERSION + 1} is not supported"):
        wire.decode_message(bytes(bad))
    bad = bytearray(good)
    bad[:4] = b"HTTP"
    with pytest.raises(wire.ProtocolError, match="bad magic"):
        wire.decode_message(bytes(bad))
    bad = bytearray(good)
    bad[6:8] = b"\x00\x01"
    with pytest.raises(wire.ProtocolError, match="reserved"):
        wire.decode_message(bytes(bad))


def test_wire_rejects_truncated_trailing_and_oversized_frames():
    frame = _frame(wire.Message("step", {}, {"actions": np.zeros((5, 7))}))
    with pytest.raises(wire.ProtocolError, match="truncated frame: prefix"):
        wire.decode_message(frame[:10])
    with pytest.raises(wire.ProtocolError, match=f"truncated frame: {len(frame) - 1} bytes"):
        wire.decode_message(frame[:-1])
    with pytest.raises(wire.ProtocolError, match="3 trailing bytes"):
        wire.decode_message(frame + b"abc")
    with pytest.raises(wire.ProtocolError, match="payload length 280 exceeds the limit 100"):
        wire.decode_message(frame, max_payload=100)
    with pytest.raises(wire.ProtocolError, match="header length .* out of range"):
        wire.decode_message(frame, max_header=8)


def _raw_frame(header: bytes, payload: bytes = b"") -> bytes:
    import struct

    return struct.pack(">4sHHIQ", wire.MAGIC, wire.PROTOCOL_VERSION, 0, len(header), len(payload)) + header + payload


@pytest.mark.parametrize(("header", "payload", "match"), [
    (b"{not json", b"", "not UTF-8 JSON"),
    (b"[1, 2]", b"", "must be a JSON object"),
    (b'{"fields": {}}', b"", "'type' must be a non-empty string"),
    (b'{"type": "x", "arrays": [{"name": "a", "dtype": "float64", "shape": [2], "offset": 0, "nbytes": 16}]}',
     b"\0" * 8, "run past the payload"),
    (b'{"type": "x", "arrays": [{"name": "a", "dtype": "float64", "shape": [2], "offset": 0, "nbytes": 12}]}',
     b"\0" * 16, "nbytes 12 != 16"),
    (b'{"type": "x", "arrays": [{"name": "a", "dtype": "complex64", "shape": [1], "offset": 0, "nbytes": 8}]}',
     b"\0" * 8, "dtype 'complex64' not allowed"),
    (b'{"type": "x", "arrays": [{"name": "a", "dtype": "uint8", "shape": [-1], "offset": 0, "nbytes": 1}]}',
     b"\0", "shape must be a list of non-negative ints"),
    (b'{"type": "x", "arrays": []}', b"\0" * 4, "arrays cover 0 payload bytes but the payload has 4"),
])
def test_wire_rejects_malformed_headers(header, payload, match):
    with pytest.raises(wire.ProtocolError, match=match):
        wire.decode_message(_raw_frame(header, payload))


def test_wire_rejects_unsendable_values():
    with pytest.raises(wire.ProtocolError, match="dtype complex128 cannot be sent"):
        wire.encode_message(wire.Message("x", {}, {"c": np.zeros(2, np.complex128)}))
    with pytest.raises(wire.ProtocolError, match="not JSON-serialisable"):
        wire.encode_message(wire.Message("x", {"v": float("nan")}))
    with pytest.raises(wire.ProtocolError, match="non-empty string"):
        wire.Message("")


def test_wire_over_a_real_socket_in_pieces_and_peer_close_mid_frame():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        big = np.arange(300_000, dtype=np.float64).reshape(1000, 300)
        frame = _frame(wire.Message("obs", {"k": 1}, {"big": big}))

        def sender():  # odd-sized pieces: the receiver must reassemble across recv calls
            for i in range(0, len(frame), 77_777):
                a.sendall(frame[i : i + 77_777])

        t = threading.Thread(target=sender)
        t.start()
        got = wire.recv_message(b)
        t.join()
        np.testing.assert_array_equal(got.arrays["big"], big)
        a.sendall(frame[:100])
        a.close()
        with pytest.raises(wire.PeerClosedError, match="in the middle of a frame"):
            wire.recv_message(b)
    finally:
        b.close()


# ---------------------------------------------------------------------------------------------------
# protocols: state, images, actions
# ---------------------------------------------------------------------------------------------------


def test_axis_angle_matches_scipy_and_zero_rotation():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(1)
    for q in rng.standard_normal((20, 4)):
        q = q / np.linalg.norm(q)
        q = q if q[3] >= 0 else -q  # scipy's rotvec has angle <= pi; robosuite's uses the w >= 0 hemisphere there
        np.testing.assert_allclose(quat_to_axis_angle(q), Rotation.from_quat(q).as_rotvec(), atol=ATOL_AXIS_ANGLE)
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1]), np.zeros(3))
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, 1, 0]), [0, 0, math.pi], atol=ATOL_AXIS_ANGLE)
    with pytest.raises(ValueError, match="quaternion"):
        quat_to_axis_angle([0, 0, 1])


def test_state_layout():
    s = libero_state([0.1, 0.2, 0.3], [0, 0, math.sin(0.25), math.cos(0.25)], [0.04, -0.039])
    np.testing.assert_allclose(s, [0.1, 0.2, 0.3, 0, 0, 0.5, 0.04, -0.039], atol=ATOL_AXIS_ANGLE)
    with pytest.raises(ValueError, match="gripper_qpos 2"):
        libero_state([0, 0, 0], [0, 0, 0, 1], [0.1])


def _marked(res: int, color, corner=(0, 0), size: int = 32) -> np.ndarray:
    img = np.full((res, res, 3), 40, np.uint8)
    r, c = corner
    img[r : r + size, c : c + size] = color
    return img


@pytest.mark.parametrize("protocol", [OPENPI, OFT], ids=["openpi", "oft"])
def test_policy_image_rotates_180_and_resizes(protocol):
    out = policy_image(_marked(256, (250, 10, 10)), protocol)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # the top-left marker ends bottom-right (LIBERO renders upside down); 32 px at 256 -> 28 px at 224
    br, tl = out[-20:, -20:].reshape(-1, 3).mean(0), out[:20, :20].reshape(-1, 3).mean(0)
    assert br[0] > 200 and br[1] < 60, br
    assert abs(tl[0] - 40) < 8, tl


def test_openpi_resize_with_pad_keeps_aspect():
    img = np.full((128, 256, 3), 200, np.uint8)  # 2:1 -> 224 x 112, black bars top and bottom
    out = policy_image(img, OPENPI)
    assert out[:50].max() == 0 and out[-50:].max() == 0 and out[112].min() == 200


def test_env_actions_openpi_passthrough_and_oft_gripper():
    chunk = np.zeros((10, 32), np.float32)
    chunk[:, :6] = np.arange(10)[:, None] * 0.01
    chunk[:, 6] = [0.9, 0.2, 0.51, 0.49, 0.7, 0.1, 0.9, 0.2, 0.6, 0.4]
    a = env_actions(chunk, OPENPI)
    assert a.shape == (5, 7) and a.dtype == np.float64
    np.testing.assert_array_equal(a, chunk[:5, :7].astype(np.float64))
    b = env_actions(chunk, OFT)
    assert b.shape == (8, 7)
    np.testing.assert_array_equal(b[:, :6], chunk[:8, :6].astype(np.float64))
    # [0, 1] -> sign(2g - 1), inverted: open (> 0.5) -> -1, close -> +1 (LIBERO: -1 open)
    np.testing.assert_array_equal(b[:, 6], [-1, 1, -1, 1, -1, 1, -1, 1])
    with pytest.raises(ValueError, match=r"\[H >= 1, d >= 7\]"):
        env_actions(np.zeros((4, 6)), OPENPI)
    with pytest.raises(ValueError, match="NaN"):
        env_actions(np.full((4, 7), np.nan), OPENPI)
    assert get_protocol("oft", replan_steps=3).replan_steps == 3
    with pytest.raises(ValueError, match="unknown LIBERO protocol 'x'"):
        get_protocol("x")


def test_to_observation_slots_and_missing_arrays():
    arrays = {wire.OBS_AGENTVIEW: _marked(256, (250, 0, 0)), wire.OBS_WRIST: _marked(256, (0, 250, 0)),
              wire.OBS_EEF_POS: np.array([0.1, 0.2, 0.3]), wire.OBS_EEF_QUAT: np.array([0, 0, 0, 1.0]),
              wire.OBS_GRIPPER_QPOS: np.array([0.04, -0.04])}
    o = to_observation(arrays, "do it", ("base_0_rgb", "left_wrist_0_rgb"), OPENPI)
    assert set(o.images) == {"base_0_rgb", "left_wrist_0_rgb"} and o.instruction == "do it"
    assert o.images["base_0_rgb"][-5, -5, 0] > 200 and o.images["left_wrist_0_rgb"][-5, -5, 1] > 200
    assert o.state.dtype == np.float32 and o.state.shape == (8,)
    del arrays[wire.OBS_EEF_QUAT]
    with pytest.raises(ValueError, match="lacks \\['eef_quat'\\]"):
        to_observation(arrays, "x", ("a", "b"), OPENPI)


def test_select_tasks_by_index_and_name():
    avail = [{"index": i, "name": f"t{i}"} for i in range(3)]
    assert [t["index"] for t in select_tasks(avail, ("2", "t0"))] == [2, 0]
    assert select_tasks(avail, ()) == avail
    with pytest.raises(ValueError, match="no task 'nope'"):
        select_tasks(avail, ("nope",))


# ---------------------------------------------------------------------------------------------------
# episode loop against a fake env server process (real protocol, real socket)
# ---------------------------------------------------------------------------------------------------

FAKE_SERVER = textwrap.dedent('''
    """Fake LIBERO env server: the real env_server loop and wire codec with a deterministic numpy env."""
    import json, sys
    import numpy as np
    sys.path.insert(0, {libero_dir!r})
    import env_server, wire

    RES = 64
    GOAL_X = {goal_x!r}

    class FakeBackend:
        def __init__(self):
            self.log = open({log_path!r}, "a")

        def info(self):
            return {{"libero_version": "fake", "suites": ["libero_spatial"]}}

        def tasks(self, suite):
            return [{{"index": i, "name": f"task_{{i}}", "language": f"do task {{i}}", "n_init_states": 3}}
                    for i in range(2)]

        def _obs(self, done):
            view = np.full((RES, RES, 3), 40, np.uint8); view[:8, :8] = (250, 0, 0)
            wrist = np.full((RES, RES, 3), 40, np.uint8); wrist[:8, :8] = (0, 250, 0)
            raw = {{"agentview_image": view, "robot0_eye_in_hand_image": wrist,
                    "robot0_eef_pos": self.pos.copy(), "robot0_eef_quat": np.array([0.0, 0.0, np.sin(0.3), np.cos(0.3)]),
                    "robot0_gripper_qpos": np.array([0.04, -0.04]) * self.steps / (self.steps + 1.0)}}
            return env_server.obs_message(raw, done=done, reward=float(done), steps=self.n, language="fake")

        def reset(self, suite, task, init_index, seed, resolution):
            if init_index >= 3:
                raise ValueError(f"init index {{init_index}} out of range (3 init states)")
            self.pos, self.steps, self.n = np.array([0.0, 0.1 * init_index, 0.5]), 0, 0
            self.log.write(json.dumps({{"reset": [suite, task, init_index, seed, resolution]}}) + "\\n")
            return self._obs(False)

        def step(self, actions, stop_on_done):
            self.n, done = 0, False
            for a in actions:
                self.pos += a[:3]
                self.steps += 1
                self.n += 1
                self.log.write(json.dumps({{"action": a.tolist()}}) + "\\n")
                done = bool(self.pos[0] >= GOAL_X)
                if done and stop_on_done:
                    break
            self.log.flush()
            return self._obs(done)

        def close(self):
            self.log.close()

    raise SystemExit(env_server.main(sys.argv[1:], backend_factory=FakeBackend))
''')


@dataclass
class StubRuntime:
    """numpy 'policy': every action moves +dx in x with gripper value ``grip``; records what it saw."""

    family: str = "pi05"
    dx: float = 0.01
    grip: float = 0.9
    horizon: int = 10
    seen: list = field(default_factory=list)

    def __post_init__(self):
        slots = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb") if self.family == "pi05" else ("full_image", "wrist_image")
        self.config = type("Cfg", (), {"camera_slots" if self.family == "pi05" else "image_slots": slots})()

    def infer(self, obs):
        self.seen.append(obs)
        a = np.zeros((self.horizon, 7), np.float32)
        a[:, 0] = self.dx
        a[:, 6] = self.grip
        return ActionChunk(actions=a, timing_ms={"total": 1.0})


def _fake_server(tmp_path: Path, goal_x: float) -> tuple[EnvServerConfig, Path]:
    script, log = tmp_path / "fake_env_server.py", tmp_path / "fake_env.jsonl"
    script.write_text(FAKE_SERVER.format(libero_dir=str(LIBERO_DIR), goal_x=goal_x, log_path=str(log)))
    return EnvServerConfig(argv=(sys.executable, str(script)), start_timeout_s=30, request_timeout_s=30), log


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_openpi_episodes_against_fake_server(tmp_path):
    # x goes 0 -> 0.205 at 0.01 per policy step: done on the 21st policy-driven step (wait steps move 0)
    server, log = _fake_server(tmp_path, goal_x=0.205)
    rt = StubRuntime(family="pi05")
    cfg = LiberoEvalConfig(gguf="unused.gguf", suite="libero_spatial", tasks=("1",), episodes=2, start_index=1,
                           max_steps=50)
    res = evaluate(cfg, runtime=rt, server=server)
    # two episodes, each: 10 wait steps, then 5 calls x 5 actions -> the 21st step reports done
    eps = res["episodes"]
    assert [(e["init_index"], e["success"], e["steps"], e["policy_calls"]) for e in eps] == [(1, True, 21, 5), (2, True, 21, 5)]
    assert res["per_task"]["libero_spatial/task_1"]["success"] == 2
    lo, hi = res["overall"]["wilson95"]
    assert res["overall"]["rate"] == 1.0 and 0.3 < lo < 0.4 and hi == 1.0
    assert res["protocol"]["name"] == "openpi" and res["max_steps"] == 50
    ev = _events(log)
    resets = [e["reset"] for e in ev if "reset" in e]
    assert resets == [["libero_spatial", 1, 1, 7, 256], ["libero_spatial", 1, 2, 7, 256]]
    acts = [e["action"] for e in ev if "action" in e]
    assert len(acts) == 2 * (10 + 21)
    assert acts[:10] == [list(DUMMY_ACTION)] * 10  # the wait steps
    assert acts[10] == [float(np.float32(0.01)), 0, 0, 0, 0, 0, float(np.float32(0.9))]  # openpi: as the policy gave it
    # what the policy saw: rotated 224 px images in the first two slots, the 8-d state of the fake env
    o = rt.seen[1]
    assert set(o.images) == {"base_0_rgb", "left_wrist_0_rgb"} and o.instruction == "do task 1"
    assert o.images["base_0_rgb"].shape == (224, 224, 3)
    assert o.images["base_0_rgb"][-10, -10, 0] > 200 and o.images["base_0_rgb"][5, 5, 0] < 60
    assert o.images["left_wrist_0_rgb"][-10, -10, 1] > 200
    steps = 15  # second call: after 10 wait steps + 5 policy steps
    want = libero_state([0.05, 0.1, 0.5], [0, 0, math.sin(0.3), math.cos(0.3)],
                        np.array([0.04, -0.04]) * steps / (steps + 1.0))
    np.testing.assert_allclose(o.state, want, atol=ATOL_STATE)


def test_oft_protocol_failure_and_gripper_over_socket(tmp_path):
    server, log = _fake_server(tmp_path, goal_x=10.0)  # never reached: every episode runs to max_steps
    rt = StubRuntime(family="openvla_oft", grip=0.8)
    cfg = LiberoEvalConfig(gguf="unused.gguf", suite="libero_goal", tasks=("task_0",), episodes=1, max_steps=20)
    res = evaluate(cfg, runtime=rt, server=server)
    (ep,) = res["episodes"]
    assert (ep["success"], ep["steps"], ep["policy_calls"]) == (False, 20, 3)  # 8 + 8 + 4
    assert res["protocol"]["name"] == "oft" and res["overall"]["wilson95"][0] == 0.0
    acts = [e["action"] for e in _events(log) if "action" in e]
    assert len(acts) == 30 and all(a[6] == -1.0 for a in acts[10:])  # 0.8 -> binarised +1 -> inverted -1 (open)
    assert [e["reset"] for e in _events(log) if "reset" in e] == [["libero_goal", 0, 0, 0, 256]]  # OFT env seed 0
    assert set(rt.seen[0].images) == {"full_image", "wrist_image"}


def test_env_server_errors_reach_the_client(tmp_path):
    server, _ = _fake_server(tmp_path, goal_x=1.0)
    with EnvClient(server) as env:
        assert env.info["libero_version"] == "fake" and env.info["version"] == wire.PROTOCOL_VERSION
        with pytest.raises(EnvServerError, match="'reset' failed: ValueError: init index 5 out of range"):
            env.reset("libero_spatial", 0, 5, 7, 256)
        with pytest.raises(EnvServerError, match="unknown request type 'jump'"):
            env.request(wire.Message("jump"), "obs")
        with pytest.raises(EnvServerError, match=r"step actions must be \[k >= 1, 7\]"):
            env.request(wire.Message("step", {}, {"actions": np.zeros((2, 6))}), "obs")
        env.reset("libero_spatial", 0, 0, 7, 256)  # the server still serves after errors
        assert env.step(np.zeros((3, 7))).steps == 3
    cfg = LiberoEvalConfig(gguf="unused.gguf", suite="libero_spatial", tasks=("0",), episodes=4)
    with pytest.raises(ValueError, match="has 3 init states; start_index 0 \\+ episodes 4 exceeds them"):
        evaluate(cfg, runtime=StubRuntime(), server=server)


def test_env_server_drops_a_client_that_sends_a_bad_frame(tmp_path):
    server, _ = _fake_server(tmp_path, goal_x=1.0)
    env = EnvClient(server)
    try:
        bad = bytearray(_frame(wire.Message("hello", {"version": 1})))
        bad[4:6] = (99).to_bytes(2, "big")
        env._sock.sendall(bytes(bad))
        reply = wire.recv_message(env._sock)
        assert reply.type == "error" and "protocol version 99 is not supported" in reply.fields["message"]
        with pytest.raises(wire.PeerClosedError):
            wire.recv_message(env._sock)
    finally:
        env.close()


def test_server_that_dies_at_startup_is_reported_with_its_log(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text("import sys\nsys.stderr.write('ImportError: no module named robosuite\\n')\nsys.exit(3)\n")
    with pytest.raises(EnvServerError, match="(?s)did not start; it exited with code 3.*no module named robosuite"):
        EnvClient(EnvServerConfig(argv=(sys.executable, str(script)), start_timeout_s=20))
    with pytest.raises(FileNotFoundError, match="setup_venv.sh"):
        EnvClient(EnvServerConfig(python=str(tmp_path / "no-venv" / "bin" / "python")))


def test_real_env_server_without_libero_says_how_to_install(tmp_path):
    """The real env_server.py in an interpreter without LIBERO (ours): a clear error through the protocol."""
    try:
        import libero  # noqa: F401
        pytest.skip("LIBERO is importable in this interpreter")
    except ImportError:
        pass
    with pytest.raises(EnvServerError, match="LIBERO is not importable .*setup_venv.sh"):
        EnvClient(EnvServerConfig(python=sys.executable, start_timeout_s=30))


def test_adapter_imports_no_torch():
    code = ("import sys, actquant_core.libero.evaluate, actquant_core.libero.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_registers_eval_libero():
    from actquant_core.cli import build_parser

    a = build_parser().parse_args(["eval-libero", "--gguf", "p.gguf", "--suite", "libero_10", "--episodes", "3",
                                   "--protocol", "oft", "--tasks", "0,2"])
    assert (a.command, a.suite, a.episodes, a.protocol, a.tasks) == ("eval-libero", "libero_10", 3, "oft", "0,2")
    with pytest.raises(ValueError, match="suite must be one of"):
        LiberoEvalConfig(gguf="p.gguf", suite="libero_100")


def test_two_workers_split_tasks_and_write_partial_results(tmp_path):
    server, log = _fake_server(tmp_path, goal_x=0.105)  # done on the 11th policy step
    out = tmp_path / "res" / "eval.json"
    cfg = LiberoEvalConfig(gguf="unused.gguf", suite="libero_object", tasks=("1", "0"), episodes=2, max_steps=30,
                           workers=2, out=str(out))
    res = evaluate(cfg, runtime=StubRuntime(), server=server)
    # results ordered as requested (task 1 first), each task's episodes in init order, all successful
    assert [(e["task_index"], e["init_index"], e["success"], e["steps"]) for e in res["episodes"]] == [
        (1, 0, True, 11), (1, 1, True, 11), (0, 0, True, 11), (0, 1, True, 11)]
    assert json.loads(out.read_text()) == json.loads(json.dumps(res)) and res["complete"] is True
    resets = [e["reset"] for e in _events(log) if "reset" in e]
    assert sorted(r[1:3] for r in resets) == [[0, 0], [0, 1], [1, 0], [1, 1]]
    with pytest.raises(ValueError, match="server_log is one file"):
        LiberoEvalConfig(gguf="p.gguf", workers=2, server_log="x.log")
