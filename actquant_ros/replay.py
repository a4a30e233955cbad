"""Rosbag replay evaluation: recorded frames -> policy runtime (simulated clock) -> action error and latency.

    actquant replay --bag BAG --gguf policy.gguf [--reference ref.gguf] [--out DIR] [--schedule realtime]
                    [--republish] [--max-frames N] [--threads 2]

1. ``read_frames`` streams the bag (``actquant_core.data.rosbag_io.read_bag``) into frames: a frame is
   complete when every camera slot has a new image; its time is the newest of those images' bag times;
   it is finalised once the bag moves past that time, so the joint state and the recorded action chunk
   logged at the same instant belong to it (state = newest joint state at or before the frame time,
   recorded chunk = the chunk logged within ``match_tolerance_s`` of it).
2. ``evaluate_replay`` feeds frames at their recorded times on a simulated clock.  Schedule
   ``every_frame`` calls the policy on every frame; ``realtime`` behaves like the node's single worker:
   a call started at bag time t occupies the worker until t + (measured latency), frames arriving while
   it is busy are skipped (counted).  The reference policy (if any) sees the same frames with the same
   noise seed, so with identical weights its actions are identical and the error isolates quantisation.
3. Scores per inferred frame: mean absolute error of the joint targets (rad) and of the gripper, against
   the recorded chunk (first min(H_policy, H_recorded) steps) and against the reference; error by horizon
   step; per-frame wall latency.  ``write_outputs`` writes ``replay.json`` and PNG plots (matplotlib Agg).

``republish_bag`` publishes the bag's CDR bytes unchanged over DDS at the recorded pace (``--republish``
runs it alongside the evaluation, e.g. to drive a live ``policy_node`` or a recorder).
Core parts (reading, scoring) import no ROS; DDS is imported only for ``republish_bag``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actquant_core import constants as C
from actquant_core.data.rosbag_io import (
    KIND_ACTION_CHUNK,
    KIND_IMAGE,
    KIND_INSTRUCTION,
    KIND_JOINT_STATE,
    TopicMap,
    bag_topics,
    iter_bag_raw,
    read_bag,
)
from actquant_core.runtime.types import Observation

__all__ = ["ReplayConfig", "ReplayFrame", "read_frames", "evaluate_replay", "write_outputs", "republish_bag",
           "add_parser", "register", "main"]

log = logging.getLogger(__name__)

SCHEDULES = ("every_frame", "realtime")
STATE_JOINTS = tuple(C.UR_JOINT_NAMES) + (C.SIM_GRIPPER_JOINT_NAME,)


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of a replay evaluation.

    Attributes:
        bag: rosbag2 folder (sqlite3 or mcap) or a single .mcap / .db3 file.
        gguf: policy to evaluate.
        reference: reference policy GGUF (e.g. full precision) or None.
        cameras: image topic -> policy camera slot.
        joint_topic / instruction_topic / chunk_topic: topics of the state, instruction and recorded actions.
        state_joints: joint names forming the state vector, in order (missing trailing "gripper" -> 0).
        action_dims: leading action dimensions scored (6 joints + gripper = 7).
        instruction: used when the bag has no instruction message.
        schedule: "every_frame" or "realtime" (see the module docstring).
        match_tolerance_s: largest |chunk time - frame time| for a recorded chunk to label a frame.
        max_frames: stop after this many frames (0 = all).
        threads: native threads per runtime (0 = default).
        seed: noise seed of both runtimes.
    """

    bag: str
    gguf: str
    reference: str | None = None
    cameras: Mapping[str, str] = field(default_factory=lambda: dict(C.SIM_CAMERA_TOPICS.items()))
    joint_topic: str = C.TOPIC_JOINT_STATES
    instruction_topic: str = C.TOPIC_INSTRUCTION
    chunk_topic: str = C.TOPIC_ACTION_CHUNK
    state_joints: tuple[str, ...] = STATE_JOINTS
    action_dims: int = 7
    instruction: str = ""
    schedule: str = "every_frame"
    match_tolerance_s: float = 0.02
    max_frames: int = 0
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        # ``cameras`` given as slot -> topic (C.SIM_CAMERA_TOPICS' direction) is turned around
        cams = dict(self.cameras)
        if cams and all(not k.startswith("/") for k in cams) and all(v.startswith("/") for v in cams.values()):
            cams = {v: k for k, v in cams.items()}
        object.__setattr__(self, "cameras", cams)
        if not cams:
            raise ValueError("ReplayConfig.cameras must map at least one image topic to a camera slot")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"ReplayConfig.schedule={self.schedule!r} must be one of {SCHEDULES}")
        if not 1 <= self.action_dims <= 64:
            raise ValueError(f"ReplayConfig.action_dims={self.action_dims!r} must be in [1, 64]")
        if not self.match_tolerance_s > 0:
            raise ValueError(f"ReplayConfig.match_tolerance_s={self.match_tolerance_s!r} must be > 0")
        if self.max_frames < 0 or self.threads < 0:
            raise ValueError(f"ReplayConfig: max_frames={self.max_frames!r} and threads={self.threads!r} must be >= 0")
        if not self.state_joints:
            raise ValueError("ReplayConfig.state_joints must name at least one joint")

    def topic_map(self) -> TopicMap:
        return TopicMap(cameras=self.cameras, joint_states=self.joint_topic, instruction=self.instruction_topic,
                        action_chunk=self.chunk_topic)


@dataclass
class ReplayFrame:
    """One synchronised frame of a bag.

    Attributes:
        t: bag time of the frame, s (relative to the first message of the bag).
        images: slot -> uint8 [H, W, 3] RGB.
        state: float32 [len(state_joints)].
        instruction: the instruction in force.
        recorded: recorded action chunk [H, D] in ``state_joints`` order, or None.
    """

    t: float
    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    recorded: np.ndarray | None = None


def _ordered(names: Sequence[str], values: np.ndarray, want: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros(len(want), dtype=np.float64)
    for k, n in enumerate(want):
        if n in index:
            out[k] = values[index[n]]
        elif n == C.SIM_GRIPPER_JOINT_NAME:
            out[k] = 0.0
        else:
            raise KeyError(f"bag message lacks joint {n!r}; it has {list(names)}")
    return out


def read_frames(cfg: ReplayConfig) -> Iterator[ReplayFrame]:
    """Frames of ``cfg.bag`` in time order (see the module docstring for the synchronisation rule)."""
    slots = set(cfg.cameras.values())
    latest_img: dict[str, np.ndarray] = {}
    fresh: set[str] = set()
    joints: list[tuple[float, np.ndarray]] = []  # recent (t, state)
    chunks: list[tuple[float, np.ndarray]] = []
    instruction = cfg.instruction
    pending: ReplayFrame | None = None
    t_first: int | None = None
    n = 0

    def finalise(fr: ReplayFrame) -> ReplayFrame | None:
        past = [s for t, s in joints if t <= fr.t + cfg.match_tolerance_s]
        if not past:
            return None
        fr.state = past[-1].astype(np.float32)
        near = [(abs(t - fr.t), a) for t, a in chunks if abs(t - fr.t) <= cfg.match_tolerance_s]
        fr.recorded = min(near, key=lambda x: x[0])[1] if near else None
        fr.instruction = instruction
        return fr

    for m in read_bag(cfg.bag, cfg.topic_map()):
        t_first = m.log_time_ns if t_first is None else t_first
        t = (m.log_time_ns - t_first) * 1e-9
        if pending is not None and t > pending.t + cfg.match_tolerance_s:
            fr = finalise(pending)
            pending = None
            if fr is not None:
                yield fr
                n += 1
                if cfg.max_frames and n >= cfg.max_frames:
                    return
        if m.kind == KIND_IMAGE:
            latest_img[m.slot] = m.value
            fresh.add(m.slot)
            if fresh >= slots:
                pending = ReplayFrame(t=t, images=dict(latest_img), state=np.zeros(0, np.float32), instruction="")
                fresh.clear()
        elif m.kind == KIND_JOINT_STATE:
            joints.append((t, _ordered(m.value.names, m.value.position, cfg.state_joints)))
            del joints[:-64]
        elif m.kind == KIND_ACTION_CHUNK:
            a = np.stack([_ordered(m.value.joint_names, row, cfg.state_joints) for row in m.value.actions]) if len(m.value.actions) else None
            if a is not None:
                chunks.append((t, a))
                del chunks[:-64]
        elif m.kind == KIND_INSTRUCTION:
            instruction = str(m.value)
    if pending is not None:
        fr = finalise(pending)
        if fr is not None and not (cfg.max_frames and n >= cfg.max_frames):
            yield fr


def _err(a: np.ndarray, b: np.ndarray, dims: int) -> tuple[float, float, np.ndarray]:
    """(joint MAE rad, gripper MAE, per-step joint MAE [n]) over the common horizon of a [Ha, D], b [Hb, D]."""
    n = min(a.shape[0], b.shape[0])
    d = min(dims, a.shape[1], b.shape[1])
    diff = np.abs(np.asarray(a[:n, :d], np.float64) - np.asarray(b[:n, :d], np.float64))
    j = min(d, C.UR_NUM_JOINTS)
    joint = diff[:, :j]
    grip = diff[:, j:d]
    return float(joint.mean()), float(grip.mean()) if grip.size else math.nan, joint.mean(axis=1)


def _stats(x: Sequence[float]) -> dict[str, float]:
    a = np.asarray([v for v in x if math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return {"mean": math.nan, "p50": math.nan, "p95": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max()), "n": int(a.size)}


def evaluate_replay(cfg: ReplayConfig, runtime: Any | None = None, reference: Any | None = None) -> dict:
    """Replay the bag through ``runtime`` (loaded from ``cfg.gguf`` when None) and score it.

    Returns a JSON-able dict: config, frames (read / inferred / skipped_busy / labelled), metrics
    ("recorded" and "reference": joint / gripper MAE stats, per-step joint MAE), latency_ms stats, and
    "per_frame": [{t, latency_ms, err_recorded, err_reference}] for the inferred frames.
    """
    from actquant_core.runtime import load_runtime

    kw: dict[str, Any] = {"seed": cfg.seed}
    if cfg.threads:
        kw["n_threads"] = cfg.threads
    rt = runtime if runtime is not None else load_runtime(cfg.gguf, **kw)
    ref = reference if reference is not None else (load_runtime(cfg.reference, **kw) if cfg.reference else None)
    slots = tuple(getattr(getattr(rt, "config", None), "camera_slots", ()))
    bad = [s for s in cfg.cameras.values() if slots and s not in slots]
    if bad:
        raise ValueError(f"camera slots {bad} are not slots of the policy {cfg.gguf!r} ({list(slots)})")
    per_frame = []
    busy_until = -math.inf
    n_read = n_skipped = 0
    steps_rec: list[np.ndarray] = []
    steps_ref: list[np.ndarray] = []
    t0 = time.perf_counter()
    for fr in read_frames(cfg):
        n_read += 1
        if cfg.schedule == "realtime" and fr.t < busy_until:
            n_skipped += 1
            continue
        obs = Observation(images=fr.images, state=fr.state, instruction=fr.instruction, stamp=fr.t)
        w0 = time.perf_counter()
        chunk = rt.infer(obs)
        lat = (time.perf_counter() - w0) * 1e3
        busy_until = fr.t + lat / 1e3
        actions = np.asarray(chunk.actions, np.float64)
        row: dict[str, Any] = {"t": fr.t, "latency_ms": lat, "err_recorded": math.nan, "err_recorded_gripper": math.nan,
                               "err_reference": math.nan, "err_reference_gripper": math.nan}
        if not np.all(np.isfinite(actions)):
            row["nonfinite"] = True
        if fr.recorded is not None:
            e, g, s = _err(actions, fr.recorded, cfg.action_dims)
            row["err_recorded"], row["err_recorded_gripper"] = e, g
            steps_rec.append(s)
        if ref is not None:
            ra = np.asarray(ref.infer(obs).actions, np.float64)
            e, g, s = _err(actions, ra, cfg.action_dims)
            row["err_reference"], row["err_reference_gripper"] = e, g
            steps_ref.append(s)
        per_frame.append(row)
    if n_read == 0:
        raise ValueError(f"bag {cfg.bag!r}: no complete frame (needs images on {sorted(cfg.cameras)} and joint states on "
                         f"{cfg.joint_topic!r})")

    def _steps(rows: list[np.ndarray]) -> list[float]:
        if not rows:
            return []
        n = max(len(r) for r in rows)
        acc = np.full((len(rows), n), np.nan)
        for i, r in enumerate(rows):
            acc[i, :len(r)] = r
        return np.nanmean(acc, axis=0).tolist()

    metrics = {
        "recorded": {"joint_mae_rad": _stats([r["err_recorded"] for r in per_frame]),
                     "gripper_mae": _stats([r["err_recorded_gripper"] for r in per_frame]),
                     "joint_mae_by_step": _steps(steps_rec)},
    }
    if ref is not None:
        metrics["reference"] = {"joint_mae_rad": _stats([r["err_reference"] for r in per_frame]),
                                "gripper_mae": _stats([r["err_reference_gripper"] for r in per_frame]),
                                "joint_mae_by_step": _steps(steps_ref)}
    cfg_d = asdict(cfg)
    cfg_d["cameras"] = dict(cfg.cameras)
    return {
        "config": cfg_d,
        "frames": {"read": n_read, "inferred": len(per_frame), "skipped_busy": n_skipped,
                   "labelled": len(steps_rec), "nonfinite": sum(1 for r in per_frame if r.get("nonfinite"))},
        "metrics": metrics,
        "latency_ms": _stats([r["latency_ms"] for r in per_frame]),
        "wall_s": time.perf_counter() - t0,
        "per_frame": per_frame,
    }


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``replay.json`` and the plots ``replay_error.png``, ``replay_latency.png``, ``replay_steps.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "replay.json"}
    paths["json"].write_text(json.dumps(result, indent=1, default=float))
    rows = result["per_frame"]
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [r["err_recorded"] for r in rows], label="vs recorded")
    if "reference" in result["metrics"]:
        ax.plot(t, [r["err_reference"] for r in rows], label="vs reference")
    ax.set_xlabel("bag time (s)")
    ax.set_ylabel("joint MAE (rad)")
    ax.legend()
    fig.tight_layout()
    paths["error"] = out / "replay_error.png"
    fig.savefig(paths["error"], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist([r["latency_ms"] for r in rows], bins=30)
    ax.set_xlabel("policy latency (ms)")
    ax.set_ylabel("frames")
    fig.tight_layout()
    paths["latency"] = out / "replay_latency.png"
    fig.savefig(paths["latency"], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, m in result["metrics"].items():
        if m["joint_mae_by_step"]:
            ax.plot(np.arange(1, len(m["joint_mae_by_step"]) + 1), m["joint_mae_by_step"], marker="o", label=f"vs {key}")
    ax.set_xlabel("chunk step")
    ax.set_ylabel("joint MAE (rad)")
    ax.legend()
    fig.tight_layout()
    paths["steps"] = out / "replay_steps.png"
    fig.savefig(paths["steps"], dpi=100)
    plt.close(fig)
    return paths


def republish_bag(bag: str | Path, rate: float = 1.0, topics: Sequence[str] | None = None, node: Any = None,
                  stop: threading.Event | None = None, wait_for_subscribers_s: float = 0.0) -> int:
    """Publish a bag's messages unchanged (CDR bytes) over DDS at ``rate`` x the recorded pace.

    Only the project's message types are republished (Image, CompressedImage, JointState, String,
    JointTrajectory, DiagnosticArray); images go out with sensor-data QoS, the rest with the ROS default.
    All publishers are created first; then up to ``wait_for_subscribers_s`` is spent waiting until each
    has a matched subscription, and the pacing clock starts with the first message.
    Returns the number of messages published.
    """
    from actquant_ros import msgs as M
    from actquant_ros.transport import QOS_DEFAULT, QOS_SENSOR_DATA, make_node

    if not rate > 0:
        raise ValueError(f"republish rate must be > 0, got {rate}")
    types = {C.ROS_TYPE_IMAGE: M.Image, C.ROS_TYPE_COMPRESSED_IMAGE: M.CompressedImage, C.ROS_TYPE_JOINT_STATE: M.JointState,
             C.ROS_TYPE_STRING: M.String, C.ROS_TYPE_JOINT_TRAJECTORY: M.JointTrajectory,
             C.ROS_TYPE_DIAGNOSTIC_ARRAY: M.DiagnosticArray}
    own = node is None
    node = node or make_node("bag_republisher", backend="dds", argv=[])
    pubs: dict[str, Any] = {}
    n = 0
    try:
        for topic, msgtype in bag_topics(bag).items():  # every publisher first, then one discovery wait
            if msgtype not in types or (topics is not None and topic not in topics):
                continue
            qos = QOS_SENSOR_DATA if msgtype in (C.ROS_TYPE_IMAGE, C.ROS_TYPE_COMPRESSED_IMAGE) else QOS_DEFAULT
            pubs[topic] = node.create_publisher(types[msgtype], topic, qos)
            if not hasattr(pubs[topic], "publish_cdr"):
                raise RuntimeError(f"republishing raw CDR needs the DDS backend; node {node.name!r} is {node.backend}")
        deadline = time.monotonic() + wait_for_subscribers_s
        while time.monotonic() < deadline and not all(p.subscription_count() for p in pubs.values()):
            time.sleep(0.01)
        t_bag0 = t_wall0 = None
        for topic, _msgtype, t_ns, cdr in iter_bag_raw(bag, list(pubs)):
            if stop is not None and stop.is_set():
                break
            if t_bag0 is None:
                t_bag0, t_wall0 = t_ns, time.monotonic()
            delay = t_wall0 + (t_ns - t_bag0) * 1e-9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pubs[topic].publish_cdr(cdr)
            n += 1
    finally:
        if own:
            node.shutdown()
    return n


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``actquant replay`` (registry hook: ``register = add_parser``)."""
    p = sub.add_parser("replay", help="rosbag replay evaluation: action error vs recorded / reference, latency")
    _add_args(p)
    p.set_defaults(func=_cli)


register = add_parser


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", required=True, help="rosbag2 folder or .mcap / .db3 file")
    p.add_argument("--gguf", required=True, help="policy GGUF to evaluate")
    p.add_argument("--reference", default=None, help="reference policy GGUF (e.g. full precision)")
    p.add_argument("--out", default="replay_out", help="output folder for replay.json and plots")
    p.add_argument("--schedule", choices=SCHEDULES, default="every_frame",
                   help="every_frame: infer every frame; realtime: skip frames while the simulated worker is busy")
    p.add_argument("--camera", action="append", default=[], metavar="TOPIC=SLOT",
                   help="image topic -> camera slot (repeatable; default the simulator's two cameras)")
    p.add_argument("--joint-topic", default=C.TOPIC_JOINT_STATES)
    p.add_argument("--instruction-topic", default=C.TOPIC_INSTRUCTION)
    p.add_argument("--chunk-topic", default=C.TOPIC_ACTION_CHUNK, help="recorded action chunks (JointTrajectory)")
    p.add_argument("--instruction", default="", help="instruction when the bag has none")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    p.add_argument("--threads", type=int, default=0, help="native threads per runtime (0 = default)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of both runtimes")
    p.add_argument("--no-plots", action="store_true", help="write only replay.json")
    p.add_argument("--republish", action="store_true", help="also republish the bag over DDS at the recorded pace")
    p.add_argument("--republish-rate", type=float, default=1.0, help="pace factor of --republish")


def _config_from_args(a: argparse.Namespace) -> ReplayConfig:
    cams: dict[str, str] = {}
    for item in a.camera:
        if "=" not in item:
            raise ValueError(f"--camera expects TOPIC=SLOT, got {item!r}")
        topic, slot = item.split("=", 1)
        cams[topic] = slot
    kw: dict[str, Any] = {"cameras": cams} if cams else {}
    return ReplayConfig(bag=a.bag, gguf=a.gguf, reference=a.reference, joint_topic=a.joint_topic,
                        instruction_topic=a.instruction_topic, chunk_topic=a.chunk_topic, instruction=a.instruction,
                        schedule=a.schedule, max_frames=a.max_frames, threads=a.threads, seed=a.seed, **kw)


def _cli(a: argparse.Namespace) -> int:
    cfg = _config_from_args(a)
    stop = threading.Event()
    rep = None
    if a.republish:
        rep = threading.Thread(target=republish_bag, args=(cfg.bag, a.republish_rate), kwargs={"stop": stop}, daemon=True)
        rep.start()
    try:
        res = evaluate_replay(cfg)
    finally:
        if rep is not None:
            rep.join()  # let the republisher finish the bag at its pace
            stop.set()
    out = Path(a.out)
    if a.no_plots:
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay.json").write_text(json.dumps(res, indent=1, default=float))
    else:
        write_outputs(res, out)
    m = res["metrics"]
    print(f"frames {res['frames']['inferred']}/{res['frames']['read']}  latency p50 {res['latency_ms']['p50']:.1f} ms "
          f"p95 {res['latency_ms']['p95']:.1f} ms")
    print(f"joint MAE vs recorded  {m['recorded']['joint_mae_rad']['mean']:.4f} rad")
    if "reference" in m:
        print(f"joint MAE vs reference {m['reference']['joint_mae_rad']['mean']:.4f} rad")
    print(f"wrote {out / 'replay.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m actquant_ros.replay --bag ... --gguf ...`` (same options as ``actquant replay``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="actquant replay", description=__doc__.split("\n\n")[0])
    _add_args(p)
    a = p.parse_args(argv)
    try:
        return _cli(a)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
