"""Episodes of (images, state, action, instruction), written and read as a LeRobot-style dataset or as
rosbag2 (sqlite3 / mcap, via ``rosbags``).

LeRobot-style layout (format ``SIM_DATASET_FORMAT``; parquet is not available here, so episodes are
``.npz`` files with one array per feature, frame-major)::

    <root>/meta/info.json        format, fps, robot_type, image_size, cameras, features {key: dtype, shape,
                                 names}, data_path template, total_episodes, total_frames
    <root>/meta/tasks.jsonl      {"task_index", "task" (instruction), "key" ("<suite>/<name>")}
    <root>/meta/episodes.jsonl   {"episode_index", "task_index", "task", "key", "length", "success", "seed"}
    <root>/data/chunk-XXX/episode_YYYYYY.npz
        observation.state               float32 [T, 7]   q[6] (rad) + gripper opening [0, 1]
        action                          float32 [T, 7]   joint target q[6] (rad) + gripper target [0, 1]
        observation.images.<camera>     uint8 [T, H, W, 3] RGB, for each camera in SIM_CAMERAS
        timestamp                       float32 [T]      seconds since the episode start (frame_index / fps)
        frame_index, episode_index, task_index   int64 [T]

rosbag2 layout: one bag per episode (``<root>/episode_YYYYYY/``), all stamps = episode start + k / fps:
    SIM_TOPIC_IMAGE_BASE / SIM_TOPIC_IMAGE_WRIST   sensor_msgs/msg/Image, rgb8, frame k's camera image
    SIM_TOPIC_JOINT_STATES   sensor_msgs/msg/JointState: 6 arm joints + "gripper" (position, velocity)
    SIM_TOPIC_INSTRUCTION    std_msgs/msg/String, once at the start
    SIM_TOPIC_ACTION_CHUNK   trajectory_msgs/msg/JointTrajectory: actions k .. k+H-1 (6 arm joints +
                             "gripper"), time_from_start = (j + 1) / fps; points[0] is frame k's action.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from actquant_core.constants import (
    SIM_ARM_JOINTS,
    SIM_CAMERA_TOPICS,
    SIM_CAMERAS,
    SIM_DATASET_FORMAT,
    SIM_GRIPPER_JOINT_NAME,
    SIM_KEY_ACTION,
    SIM_KEY_IMAGE_PREFIX,
    SIM_KEY_STATE,
    SIM_TOPIC_ACTION_CHUNK,
    SIM_TOPIC_INSTRUCTION,
    SIM_TOPIC_JOINT_STATES,
)

log = logging.getLogger(__name__)

CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk:03d}/episode_{index:06d}.npz"
BAG_EPOCH_NS = 1_700_000_000 * 10**9  # stamp of frame 0 in written bags
JOINT_NAMES = SIM_ARM_JOINTS + (SIM_GRIPPER_JOINT_NAME,)


@dataclass(frozen=True)
class Frame:
    """One time step: ``images`` {camera: uint8 [H, W, 3]}, ``state`` [7], ``action`` [7], ``instruction``."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    instruction: str


@dataclass
class Episode:
    """A recorded episode.

    Attributes:
        instruction: language instruction.
        images: {camera: uint8 [T, H, W, 3]}.
        state: float32 [T, 7].
        action: float32 [T, 7].
        fps: frame rate (Hz).
        key: task key "<suite>/<name>" ("" when unknown, e.g. read from a bag).
        index: episode index.
        success: whether the episode ended in success (None when unknown).
        seed: layout seed (or -1).
        action_chunks: optional [T, H, 7] commanded chunks (bags), NaN-padded at the end.
    """

    instruction: str
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    fps: float = 10.0
    key: str = ""
    index: int = 0
    success: bool | None = None
    seed: int = -1
    action_chunks: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        T = len(self.state)
        if self.state.ndim != 2 or self.action.shape != (T, self.state.shape[1]):
            raise ValueError(f"Episode state/action must be [T, D] with equal shapes, got {self.state.shape} "
                             f"and {self.action.shape}")
        for cam, img in self.images.items():
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != T or img.shape[3] != 3:
                raise ValueError(f"Episode image {cam!r} must be uint8 [T={T}, H, W, 3], got {img.dtype} {img.shape}")

    def __len__(self) -> int:
        return len(self.state)

    def frames(self) -> Iterator[Frame]:
        for t in range(len(self)):
            yield Frame({c: v[t] for c, v in self.images.items()}, self.state[t], self.action[t], self.instruction)


# ------------------------------------------------------------------------------------ LeRobot-style
def lerobot_features(image_size: int, cameras: tuple[str, ...] = SIM_CAMERAS) -> dict:
    feats = {
        SIM_KEY_STATE: {"dtype": "float32", "shape": [7], "names": list(JOINT_NAMES)},
        SIM_KEY_ACTION: {"dtype": "float32", "shape": [7], "names": list(JOINT_NAMES)},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    for cam in cameras:
        feats[SIM_KEY_IMAGE_PREFIX + cam] = {"dtype": "uint8", "shape": [image_size, image_size, 3],
                                             "names": ["height", "width", "channel"]}
    return feats


def write_lerobot_episode(root: Path, ep: Episode, task_index: int, compress: bool = True) -> Path:
    """Write one episode file (meta files are written by ``write_lerobot_meta``)."""
    path = Path(root) / DATA_PATH.format(chunk=ep.index // CHUNKS_SIZE, index=ep.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    T = len(ep)
    arrays = {
        SIM_KEY_STATE: ep.state.astype(np.float32),
        SIM_KEY_ACTION: ep.action.astype(np.float32),
        "timestamp": (np.arange(T) / ep.fps).astype(np.float32),
        "frame_index": np.arange(T, dtype=np.int64),
        "episode_index": np.full(T, ep.index, dtype=np.int64),
        "task_index": np.full(T, task_index, dtype=np.int64),
    }
    for cam, img in ep.images.items():
        arrays[SIM_KEY_IMAGE_PREFIX + cam] = img
    tmp = path.with_suffix(".tmp.npz")
    (np.savez_compressed if compress else np.savez)(tmp, **arrays)
    tmp.replace(path)
    return path


def write_lerobot_meta(root: Path, episodes: list[dict], tasks: list[dict], fps: float, image_size: int,
                       robot_type: str, cameras: tuple[str, ...] = SIM_CAMERAS) -> None:
    """Write ``meta/info.json``, ``meta/tasks.jsonl``, ``meta/episodes.jsonl``.

    Args:
        episodes: dicts with episode_index, task_index, task, key, length, success, seed.
        tasks: dicts with task_index, task, key.
    """
    meta = Path(root) / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    episodes = sorted(episodes, key=lambda e: e["episode_index"])
    info = {
        "codebase_version": SIM_DATASET_FORMAT,
        "robot_type": robot_type,
        "fps": fps,
        "image_size": image_size,
        "cameras": list(cameras),
        "total_episodes": len(episodes),
        "total_frames": int(sum(e["length"] for e in episodes)),
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_path": DATA_PATH,
        "features": lerobot_features(image_size, cameras),
    }
    (meta / "info.json").write_text(json.dumps(info, indent=2))
    (meta / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))


def read_lerobot(root: Path, shard: tuple[int, int] | None = None) -> Iterator[Episode]:
    """Episodes of a LeRobot-style dataset written by ``write_lerobot_*``.

    ``shard`` = (k, n): only every n-th episode starting at the k-th (files of the others are not read),
    so n processes can read a dataset in parallel."""
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    if info.get("codebase_version") != SIM_DATASET_FORMAT:
        raise ValueError(f"{root}: unsupported dataset format {info.get('codebase_version')!r}; "
                         f"expected {SIM_DATASET_FORMAT!r}")
    for i, line in enumerate((root / "meta" / "episodes.jsonl").read_text().splitlines()):
        if shard is not None and i % shard[1] != shard[0]:
            continue
        e = json.loads(line)
        path = root / info["data_path"].format(chunk=e["episode_index"] // info["chunks_size"],
                                               index=e["episode_index"])
        with np.load(path) as z:
            images = {cam: z[SIM_KEY_IMAGE_PREFIX + cam] for cam in info["cameras"]
                      if SIM_KEY_IMAGE_PREFIX + cam in z.files}
            yield Episode(instruction=e["task"], images=images, state=z[SIM_KEY_STATE], action=z[SIM_KEY_ACTION],
                          fps=float(info["fps"]), key=e.get("key", ""), index=int(e["episode_index"]),
                          success=e.get("success"), seed=int(e.get("seed", -1)))


# ------------------------------------------------------------------------------------ rosbag2
def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def write_bag(path: Path, ep: Episode, storage: str = "mcap", chunk: int = 10) -> Path:
    """Write one episode as a rosbag2 at ``path`` (a new folder).

    Args:
        storage: "mcap" or "sqlite3".
        chunk: actions per ``/action_chunk`` message (H).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"bag storage must be one of {sorted(plugins)}, got {storage!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ts = _typestore()
    T_ = ts.types
    Image, JointState, String = T_["sensor_msgs/msg/Image"], T_["sensor_msgs/msg/JointState"], T_["std_msgs/msg/String"]
    JointTrajectory, JTP = T_["trajectory_msgs/msg/JointTrajectory"], T_["trajectory_msgs/msg/JointTrajectoryPoint"]
    Header, Time, Duration = T_["std_msgs/msg/Header"], T_["builtin_interfaces/msg/Time"], T_["builtin_interfaces/msg/Duration"]
    period_ns = int(round(1e9 / ep.fps))
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"bag folder {path} already exists")
    with Writer(path, version=9, storage_plugin=plugins[storage]) as w:
        conns = {cam: w.add_connection(SIM_CAMERA_TOPICS[cam], Image.__msgtype__, typestore=ts) for cam in ep.images}
        c_js = w.add_connection(SIM_TOPIC_JOINT_STATES, JointState.__msgtype__, typestore=ts)
        c_ins = w.add_connection(SIM_TOPIC_INSTRUCTION, String.__msgtype__, typestore=ts)
        c_act = w.add_connection(SIM_TOPIC_ACTION_CHUNK, JointTrajectory.__msgtype__, typestore=ts)
        w.write(c_ins, BAG_EPOCH_NS, ts.serialize_cdr(String(data=ep.instruction), String.__msgtype__))
        dt = 1.0 / ep.fps
        for k in range(len(ep)):
            t_ns = BAG_EPOCH_NS + k * period_ns
            stamp = Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9)
            for cam, imgs in ep.images.items():
                img = np.ascontiguousarray(imgs[k])
                msg = Image(header=Header(stamp=stamp, frame_id=cam), height=img.shape[0], width=img.shape[1],
                            encoding="rgb8", is_bigendian=0, step=img.shape[1] * 3, data=img.reshape(-1))
                w.write(conns[cam], t_ns, ts.serialize_cdr(msg, Image.__msgtype__))
            vel = np.zeros(7) if k == 0 else (ep.state[k] - ep.state[k - 1]) / dt
            js = JointState(header=Header(stamp=stamp, frame_id=""), name=list(JOINT_NAMES),
                            position=ep.state[k].astype(np.float64), velocity=vel.astype(np.float64),
                            effort=np.zeros(0, dtype=np.float64))
            w.write(c_js, t_ns, ts.serialize_cdr(js, JointState.__msgtype__))
            points = []
            for j, a in enumerate(ep.action[k:k + chunk]):
                tfs = (j + 1) * period_ns
                points.append(JTP(positions=a.astype(np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
                                  effort=np.zeros(0), time_from_start=Duration(sec=tfs // 10**9, nanosec=tfs % 10**9)))
            jt = JointTrajectory(header=Header(stamp=stamp, frame_id=""), joint_names=list(JOINT_NAMES), points=points)
            w.write(c_act, t_ns, ts.serialize_cdr(jt, JointTrajectory.__msgtype__))
    return path


def read_bag(path: Path) -> Episode:
    """One episode from a rosbag2 folder written by ``write_bag`` (or recorded with the same topics)."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    topic_cam = {t: c for c, t in SIM_CAMERA_TOPICS.items()}
    images: dict[str, list[np.ndarray]] = {}
    states: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    instruction = ""
    stamps: list[int] = []
    with AnyReader([path], default_typestore=_typestore()) as r:
        for conn, t_ns, raw in r.messages():
            msg = r.deserialize(raw, conn.msgtype)
            if conn.topic in topic_cam:
                if msg.encoding != "rgb8":
                    raise ValueError(f"{path}: {conn.topic} has encoding {msg.encoding!r}; expected 'rgb8'")
                img = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3)
                images.setdefault(topic_cam[conn.topic], []).append(img)
            elif conn.topic == SIM_TOPIC_JOINT_STATES:
                order = [list(msg.name).index(n) for n in JOINT_NAMES]
                states.append(np.asarray(msg.position, dtype=np.float64)[order])
                stamps.append(t_ns)
            elif conn.topic == SIM_TOPIC_ACTION_CHUNK:
                order = [list(msg.joint_names).index(n) for n in JOINT_NAMES]
                chunks.append(np.stack([np.asarray(p.positions)[order] for p in msg.points]))
            elif conn.topic == SIM_TOPIC_INSTRUCTION:
                instruction = msg.data
    T = len(states)
    if T == 0 or len(chunks) != T or any(len(v) != T for v in images.values()):
        raise ValueError(f"{path}: inconsistent bag: {T} joint states, {len(chunks)} chunks, "
                         f"{ {c: len(v) for c, v in images.items()} } images")
    H = max(len(c) for c in chunks)
    padded = np.full((T, H, 7), np.nan, dtype=np.float32)
    for k, c in enumerate(chunks):
        padded[k, :len(c)] = c
    fps = 1e9 / float(np.median(np.diff(stamps))) if T > 1 else 10.0
    return Episode(instruction=instruction, images={c: np.stack(v) for c, v in images.items()},
                   state=np.stack(states).astype(np.float32), action=padded[:, 0].copy(), fps=round(fps, 6),
                   action_chunks=padded)


# ------------------------------------------------------------------------------------ dispatch
def read_episodes(path: Path) -> Iterator[Episode]:
    """Episodes from a LeRobot-style dataset root, one bag folder, or a folder of bag folders.

    A demos output folder (``sim.demos --out DIR``) is accepted too: its ``lerobot/`` part is read.
    """
    path = Path(path)
    if (path / "meta" / "info.json").exists():
        yield from read_lerobot(path)
    elif (path / "metadata.yaml").exists():
        yield read_bag(path)
    elif (path / "lerobot" / "meta" / "info.json").exists():
        yield from read_lerobot(path / "lerobot")
    else:
        bags = sorted(p for p in path.iterdir() if (p / "metadata.yaml").exists()) if path.is_dir() else []
        if not bags:
            raise FileNotFoundError(f"{path}: neither a LeRobot-style dataset (meta/info.json) nor rosbag2 folders")
        for i, b in enumerate(bags):
            ep = read_bag(b)
            suffix = b.name.rsplit("_", 1)[-1]
            ep.index = int(suffix) if suffix.isdigit() else i  # "episode_000004" -> 4
            yield ep
