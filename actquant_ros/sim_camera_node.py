"""The UR controller simulator with its MuJoCo cameras on DDS, in one process.

The MuJoCo world lives in the simulator process, so this entry point runs the simulator itself
(``UrSimServer``, same flags as ``python -m actquant_core.sim.ursim``, ``--backend mujoco``) and a node
that publishes, from ``actquant_core.sim.ursim.camera_publisher.CameraStream``:

    /camera/base/image_raw, /camera/wrist/image_raw   sensor_msgs/Image rgb8, sensor-data QoS, ``camera_rate_hz``
    /instruction                                      std_msgs/String, every ``instruction_period_s``
    /joint_states (``publish_joint_states``)          sensor_msgs/JointState: 6 arm joints + "gripper"

Run::

    python -m actquant_ros.sim_camera_node --host 127.0.0.2 --model ur3 --task spatial/... \
        [--ready-file F] --ros-args -p camera_rate_hz:=10.0

Prints the simulator's ``URSIM READY ...`` line once the ports serve and the camera node is up.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from actquant_core import constants as C
from actquant_ros.convert import numpy_to_image, numpy_to_joint_state
from actquant_ros.msgs import Image, JointState, String
from actquant_ros.transport import QOS_DEFAULT, QOS_SENSOR_DATA, Node, make_node

__all__ = ["SimCameraConfig", "SimCameraPublisher", "main"]

log = logging.getLogger(__name__)


def _abs(v: str) -> bool:
    return isinstance(v, str) and v.startswith("/")


@dataclass(frozen=True)
class SimCameraConfig:
    """ROS parameters of the camera publisher.

    Attributes:
        camera_rate_hz: frames per second (each camera), (0, 60].
        image_size: rendered square size in pixels, (0, 640].
        base_topic / wrist_topic: image topics of the base ("base_0_rgb") and wrist ("left_wrist_0_rgb") cameras.
        instruction: published instruction ("" = the task's instruction).
        instruction_topic: std_msgs/String topic.
        instruction_period_s: republish period of the instruction (late subscribers get it), s.
        publish_joint_states: also publish the simulated arm's JointState at the camera rate.
        joint_topic: JointState topic.
    """

    camera_rate_hz: float = 10.0
    image_size: int = 224
    base_topic: str = C.TOPIC_CAMERA_BASE
    wrist_topic: str = C.TOPIC_CAMERA_WRIST
    instruction: str = ""
    instruction_topic: str = C.TOPIC_INSTRUCTION
    instruction_period_s: float = 1.0
    publish_joint_states: bool = True
    joint_topic: str = C.TOPIC_JOINT_STATES

    def __post_init__(self) -> None:
        if not 0 < self.camera_rate_hz <= 60:
            raise ValueError(f"SimCameraConfig.camera_rate_hz={self.camera_rate_hz!r} must be in (0, 60]")
        if not 0 < self.image_size <= 640:
            raise ValueError(f"SimCameraConfig.image_size={self.image_size!r} must be in (0, 640]")
        for f in ("base_topic", "wrist_topic", "instruction_topic", "joint_topic"):
            if not _abs(getattr(self, f)):
                raise ValueError(f"SimCameraConfig.{f}={getattr(self, f)!r} must be an absolute topic")
        if not self.instruction_period_s > 0:
            raise ValueError(f"SimCameraConfig.instruction_period_s={self.instruction_period_s!r} must be > 0")

    @classmethod
    def from_node(cls, node: Node) -> SimCameraConfig:
        d = cls()
        return cls(
            camera_rate_hz=node.declare_parameter("camera_rate_hz", d.camera_rate_hz, "camera frames per second", lambda v: 0 < v <= 60),
            image_size=node.declare_parameter("image_size", d.image_size, "rendered square image size, px", lambda v: 0 < v <= 640),
            base_topic=node.declare_parameter("base_topic", d.base_topic, "image topic of the base camera (slot base_0_rgb)", _abs),
            wrist_topic=node.declare_parameter("wrist_topic", d.wrist_topic, "image topic of the wrist camera (slot left_wrist_0_rgb)", _abs),
            instruction=node.declare_parameter("instruction", d.instruction, "instruction to publish ('' = the task's)"),
            instruction_topic=node.declare_parameter("instruction_topic", d.instruction_topic, "std_msgs/String instruction topic", _abs),
            instruction_period_s=node.declare_parameter("instruction_period_s", d.instruction_period_s, "instruction republish period, s", lambda v: v > 0),
            publish_joint_states=node.declare_parameter("publish_joint_states", d.publish_joint_states, "publish the simulated JointState too"),
            joint_topic=node.declare_parameter("joint_topic", d.joint_topic, "JointState topic", _abs),
        )


class SimCameraPublisher:
    """Publishes a ``CameraStream``'s frames (and the instruction / joint states) on a facade node."""

    def __init__(self, node: Node, cfg: SimCameraConfig, world, default_instruction: str = "") -> None:
        from actquant_core.sim.ursim.camera_publisher import CameraStream, CameraStreamConfig

        self.node, self.cfg, self.world = node, cfg, world
        self.instruction = cfg.instruction or default_instruction
        self.frames_published = 0
        topics = {C.SIM_CAMERA_BASE: cfg.base_topic, C.SIM_CAMERA_WRIST: cfg.wrist_topic}
        self._pubs = {cam: node.create_publisher(Image, t, QOS_SENSOR_DATA) for cam, t in topics.items()}
        self._ins_pub = node.create_publisher(String, cfg.instruction_topic, QOS_DEFAULT)
        self._js_pub = node.create_publisher(JointState, cfg.joint_topic, QOS_DEFAULT) if cfg.publish_joint_states else None
        self.stream = CameraStream(world, CameraStreamConfig(tuple(topics), cfg.image_size, cfg.camera_rate_hz), self._on_frames)
        node.create_timer(cfg.instruction_period_s, self._publish_instruction)

    def _on_frames(self, frames: Mapping[str, np.ndarray], _stamp: float) -> None:
        stamp_ns = self.node.now_ns()
        for cam, img in frames.items():
            self._pubs[cam].publish(numpy_to_image(img, stamp_ns=stamp_ns, frame_id=cam))
        if self._js_pub is not None:
            names = list(C.SIM_ARM_JOINTS) + [C.SIM_GRIPPER_JOINT_NAME]
            q = np.concatenate([np.asarray(self.world.q, np.float64)[:6], [float(self.world.gripper)]])
            self._js_pub.publish(numpy_to_joint_state(names, q, stamp_ns=stamp_ns))
        self.frames_published += 1

    def _publish_instruction(self) -> None:
        if self.instruction:
            self._ins_pub.publish(String(data=self.instruction))

    def start(self) -> None:
        self._publish_instruction()
        self.stream.start()

    def stop(self) -> None:
        self.stream.stop()


def _split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if C.ROS_ARGS_FLAG in argv:
        i = argv.index(C.ROS_ARGS_FLAG)
        return argv[:i], argv[i:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Simulator + camera node.  Exit 0 on SIGTERM / SIGINT, 2 on bad arguments, 1 when serving fails."""
    import actquant_core.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
    from actquant_core.sim.ursim.__main__ import build_parser
    from actquant_core.sim.ursim.camera_publisher import world_of
    from actquant_core.sim.ursim.config import UrSimConfig
    from actquant_core.sim.ursim.server import UrSimServer

    sim_argv, ros_argv = _split_ros_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.prog = "sim_camera_node"
    parser.set_defaults(backend="mujoco")
    args = parser.parse_args(sim_argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s sim_camera %(levelname)s %(name)s: %(message)s")
    if args.backend != "mujoco":
        log.error("sim_camera_node renders the MuJoCo world: --backend must be mujoco, got %r", args.backend)
        return 2
    try:
        cfg = UrSimConfig(host=args.host, model=args.model, backend=args.backend, initial_q=tuple(args.initial_q),
                          task=args.task, seed=args.seed, init_index=args.init_index, gripper_pin=args.gripper_pin,
                          pstop_unlock_delay_s=args.pstop_unlock_delay, rtde_port=args.rtde_port,
                          dashboard_port=args.dashboard_port, script_port=args.script_port)
    except ValueError as e:
        log.error("%s", e)
        return 2
    server = UrSimServer(cfg)
    node = make_node(C.SIM_CAMERA_NODE_NAME, argv=ros_argv)
    cam: SimCameraPublisher | None = None
    try:
        try:
            cam_cfg = SimCameraConfig.from_node(node)
        except ValueError as e:
            log.error("bad parameters: %s", e)
            return 2
        world = world_of(server.backend)
        task = getattr(world, "task", None)
        cam = SimCameraPublisher(node, cam_cfg, world, getattr(task, "instruction", "") if task is not None else "")
        try:
            server.start()
        except OSError as e:
            log.error("cannot serve on %s: %s", cfg.host, e)
            return 1
        cam.start()
        stop = threading.Event()

        def _on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            stop.set()
            node.shutdown()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        ready = (f"{C.URSIM_READY_LINE} host={cfg.host} model={cfg.model} backend={cfg.backend} "
                 f"rate_hz={cfg.ur.rate_hz:g} rtde={cfg.rtde_port} dashboard={cfg.dashboard_port} "
                 f"script={cfg.script_port} pid={os.getpid()} camera_rate_hz={cam_cfg.camera_rate_hz:g}")
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(ready + "\n")
            tmp.replace(args.ready_file)
        sys.stdout.write(ready + "\n")
        sys.stdout.flush()
        parent = os.getppid()
        spin = node.spin_in_thread()
        while not stop.wait(0.5):
            if args.exit_with_parent and os.getppid() != parent:
                log.warning("parent process %d is gone: shutting down", parent)
                break
            if cam.stream.error is not None:
                log.error("camera stream failed: %r", cam.stream.error)
                return 1
        spin.join(timeout=2.0)
        return 0
    finally:
        if cam is not None:
            cam.stop()
        node.shutdown()
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
