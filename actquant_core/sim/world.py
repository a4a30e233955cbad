"""``UR3World``: the MuJoCo UR3/UR3e tabletop scene with a joint servo controller and offscreen cameras.

The arm is driven by a computed-torque joint controller that tracks servoJ-like position targets:
``tau = M(q)[:6,:6] (Kp (q* - q) + Kd (qd* - qd)) + bias(q, qd)`` with ``qd*`` the slope of the current
target ramp, clipped to the UR joint torque limits.  ``set_joint_target(q, duration)`` ramps the target
linearly from the previous target over ``duration`` seconds (use the servo period, e.g. 1/125 or 1/500 s,
or the policy period, e.g. 0.1 s); ``step(dt)`` advances physics by ``dt`` in 2 ms substeps.

Thread safety: every public method takes one re-entrant lock, so the UR controller simulator may call
``set_joint_target``/``step``/``q`` from its control thread while another thread calls ``render``;
calls are serialised, never interleaved.  MuJoCo objects themselves are not thread-safe, so do not touch
``world.model``/``world.data`` from several threads without holding ``world.lock``.

Rendering uses ``MUJOCO_GL`` (default ``egl``; set ``MUJOCO_GL=osmesa`` before importing this module to
use OSMesa) with multisampling, shadows and reflections off (~2 ms per 224 px frame on one CPU core).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Sequence

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402  (MUJOCO_GL must be set before the import)

from actquant_core.constants import (  # noqa: E402
    SIM_ARM_JOINTS,
    SIM_CAMERAS,
    SIM_DRAWER_JOINT,
    SIM_FINGER_JOINTS,
    SIM_GRIPPER_ACTUATOR,
    SIM_OBJECTS,
    SIM_TCP_SITE,
)
from actquant_core.sim.mjcf import GRIPPER_HALF_OPEN, UR_SPECS, URSpec, scene_path  # noqa: E402

log = logging.getLogger(__name__)

# Closed-loop bandwidth of the joint servo (rad/s) and its damping ratio.
SERVO_OMEGA = 60.0
SERVO_ZETA = 1.0
# How long a target given with a velocity keeps moving on (s): a few servo periods of a lost stream.
EXTRAPOLATE_S = 0.02
# Where parked (unused) objects float, out of every camera's view.
PARK_ORIGIN = np.array([-0.2, -0.2, -0.3])  # under the table top
# Seed configuration for the home pose (UR "top-down" posture).
HOME_SEED = np.array([0.0, -1.9, 1.9, -1.57, -1.57, 0.0])


def _release_gl_context() -> None:
    """Release the calling thread's EGL context so that another thread may render next.

    An EGL context can be current in only one thread at a time (eglMakeCurrent fails with
    EGL_BAD_ACCESS otherwise), and MuJoCo's renderer never releases it.  OSMesa needs nothing.
    """
    if os.environ.get("MUJOCO_GL") != "egl":
        return
    import mujoco.egl as mj_egl  # noqa: PLC0415  (only loaded with the EGL backend)

    if mj_egl.EGL_DISPLAY is not None:
        mj_egl.EGL.eglMakeCurrent(mj_egl.EGL_DISPLAY, mj_egl.EGL.EGL_NO_SURFACE, mj_egl.EGL.EGL_NO_SURFACE,
                                  mj_egl.EGL.EGL_NO_CONTEXT)


class UR3World:
    """The simulated UR3 (or UR3e) on a table, with a gripper, a cabinet and tabletop objects.

    Args:
        model: "ur3" (CB3, 125 Hz) or "ur3e" (e-series, 500 Hz).
        task: optional ``Task`` or task key "<suite>/<name>" (see ``actquant_core.sim.tasks``); ``reset``
            then places its objects (seeded random layout unless an init state is given).
        seed: seed of the world's RNG (used by ``reset`` when a task samples a fresh layout).
        image_size: default render size (pixels, square).

    Attributes:
        model / data: the MuJoCo model and data (hold ``lock`` when touching them directly).
        spec: the UR kinematic/dynamic description.
        control_rate_hz: the real controller's rate for this model.
        dt_physics: physics substep (s).
    """

    def __init__(self, model: str = "ur3", task=None, seed: int = 0, image_size: int = 224) -> None:
        if model not in UR_SPECS:
            raise ValueError(f"unknown UR model {model!r}; expected one of {sorted(UR_SPECS)}")
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {image_size}")
        self.lock = threading.RLock()
        self.spec: URSpec = UR_SPECS[model]
        self.model_name = model
        self.model = mujoco.MjModel.from_xml_path(str(scene_path(model)))
        self.model.vis.quality.offsamples = 0
        self.data = mujoco.MjData(self.model)
        if isinstance(task, str):
            from actquant_core.sim.tasks import get_task

            task = get_task(task)
        self.task = task
        self.rng = np.random.default_rng(seed)
        self.image_size = image_size
        self.control_rate_hz = self.spec.control_rate_hz
        self.dt_physics = float(self.model.opt.timestep)
        m = self.model
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in SIM_ARM_JOINTS])
        self._arm_vadr = np.array([m.jnt_dofadr[m.joint(j).id] for j in SIM_ARM_JOINTS])
        if not np.array_equal(self._arm_qadr, np.arange(6)) or not np.array_equal(self._arm_vadr, np.arange(6)):
            raise RuntimeError(f"scene must put the arm joints first; got qpos adr {self._arm_qadr}")
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in SIM_FINGER_JOINTS])
        self._drawer_qadr = int(m.jnt_qposadr[m.joint(SIM_DRAWER_JOINT).id])
        self._grip_act = m.actuator(SIM_GRIPPER_ACTUATOR).id
        self._tcp_site = m.site(SIM_TCP_SITE).id
        self._obj_qadr = {n: int(m.jnt_qposadr[m.joint(f"{n}_joint").id]) for n in SIM_OBJECTS}
        self._obj_vadr = {n: int(m.jnt_dofadr[m.joint(f"{n}_joint").id]) for n in SIM_OBJECTS}
        self._obj_body = {n: m.body(n).id for n in SIM_OBJECTS}
        self._obj_geoms = {n: np.flatnonzero(m.geom_bodyid == self._obj_body[n]) for n in SIM_OBJECTS}
        self._obj_contype = {n: m.geom_contype[g].copy() for n, g in self._obj_geoms.items()}
        self._obj_conaff = {n: m.geom_conaffinity[g].copy() for n, g in self._obj_geoms.items()}
        self._lower = np.array(self.spec.lower)
        self._upper = np.array(self.spec.upper)
        self._tau_max = np.array(self.spec.torque_limits)
        self._damping = np.array(self.spec.damping)
        self._kp = SERVO_OMEGA ** 2
        self._kd = 2.0 * SERVO_ZETA * SERVO_OMEGA
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._scratch = mujoco.MjData(self.model)  # for IK / FK queries that must not touch the state
        self._acc = np.zeros(m.nv)
        self._macc = np.zeros(m.nv)
        # target ramp: q(t) = q_from + (q_to - q_from) * min(1, t / T)
        self._q_from = np.zeros(6)
        self._q_to = np.zeros(6)
        self._ramp_t = 0.0
        self._ramp_T = 0.0
        self._home_q: np.ndarray | None = None
        self._closed = False
        self.reset()

    # ------------------------------------------------------------------ state
    @property
    def q(self) -> np.ndarray:
        """Arm joint positions [6] (rad), a copy."""
        with self.lock:
            return self.data.qpos[:6].copy()

    @property
    def qd(self) -> np.ndarray:
        """Arm joint velocities [6] (rad/s), a copy."""
        with self.lock:
            return self.data.qvel[:6].copy()

    @property
    def time(self) -> float:
        """Simulated time (s) since the last reset."""
        with self.lock:
            return float(self.data.time)

    @property
    def gripper(self) -> float:
        """Gripper opening in [0, 1] (0 closed, 1 fully open)."""
        with self.lock:
            return float(np.clip(self.data.qpos[self._finger_qadr[0]] / GRIPPER_HALF_OPEN, 0.0, 1.0))

    @property
    def joint_target(self) -> np.ndarray:
        """Current (interpolated) joint target [6] (rad)."""
        with self.lock:
            return self._target()[0]

    @property
    def joint_target_velocity(self) -> np.ndarray:
        """Velocity [6] (rad/s) of the current target ramp (0 once the ramp has ended)."""
        with self.lock:
            return self._target()[1]

    @property
    def joint_torques(self) -> np.ndarray:
        """Joint torques [6] (N m) commanded by the servo in the last substep."""
        with self.lock:
            return self.data.ctrl[:6].copy()

    @property
    def drawer(self) -> float:
        """Drawer opening (m), 0 = closed."""
        with self.lock:
            return float(self.data.qpos[self._drawer_qadr])

    def home_q(self) -> np.ndarray:
        """Home joint configuration [6]: TCP 0.25 m above the workspace centre, pointing down."""
        if self._home_q is None:
            from actquant_core.sim.ik import top_down_rotation, solve_ik

            q, err = solve_ik(self, np.array([-0.28, 0.0, 0.25]), top_down_rotation(0.0), HOME_SEED,
                              iters=200)
            if err > 1e-4:
                raise RuntimeError(f"home pose IK did not converge (error {err:.3g})")
            self._home_q = q
        return self._home_q.copy()

    def get_state(self) -> dict[str, np.ndarray]:
        """Full physics state: ``qpos`` [nq], ``qvel`` [nv], ``target`` [6], ``gripper_ctrl`` [1]."""
        with self.lock:
            return {"qpos": self.data.qpos.copy(), "qvel": self.data.qvel.copy(),
                    "target": self._target()[0], "gripper_ctrl": self.data.ctrl[[self._grip_act]].copy()}

    # ------------------------------------------------------------------ reset
    def reset(self, init_state: np.ndarray | None = None, objects: Sequence[str] | None = None,
              layout: dict[str, tuple[float, float, float]] | None = None) -> None:
        """Reset physics; the arm starts at ``home_q()`` with the gripper open.

        Args:
            init_state: world part of qpos, ``qpos[6:]`` [nq - 6] (fingers, drawer, objects), as saved in
                the task init-state files.
            objects: objects that take part (collide, feel gravity); the others are parked out of view.
                Default: the task's objects, or none (empty table) when there is no task.
            layout: {object: (x, y, yaw)} placements; the objects are set down and settle for 0.3 s.
        With neither ``init_state`` nor ``layout``, a task's objects get a fresh layout drawn from the
        world's seeded RNG.
        """
        with self.lock:
            m, d = self.model, self.data
            mujoco.mj_resetData(m, d)
            if objects is None:
                objects = self.task.objects if self.task is not None else ()
            if layout is None and init_state is None and self.task is not None:
                from actquant_core.sim.tasks import sample_layout

                layout = sample_layout(self.task, self.rng)
            unknown = set(objects) - set(SIM_OBJECTS)
            if unknown:
                raise ValueError(f"unknown objects {sorted(unknown)}; expected names from {SIM_OBJECTS}")
            self._active = tuple(objects)
            for k, name in enumerate(SIM_OBJECTS):
                on = name in objects
                g = self._obj_geoms[name]
                m.geom_contype[g] = self._obj_contype[name] if on else 0
                m.geom_conaffinity[g] = self._obj_conaff[name] if on else 0
                m.body_gravcomp[self._obj_body[name]] = 0.0 if on else 1.0
                if not on:
                    a = self._obj_qadr[name]
                    d.qpos[a:a + 3] = PARK_ORIGIN + np.array([0.0, 0.06 * k, 0.0])
                    d.qpos[a + 3:a + 7] = (1.0, 0.0, 0.0, 0.0)
            if init_state is not None:
                init_state = np.asarray(init_state, dtype=np.float64)
                if init_state.shape != (m.nq - 6,):
                    raise ValueError(f"init_state must have shape ({m.nq - 6},) = qpos[6:], got {init_state.shape}")
                park = {n: d.qpos[self._obj_qadr[n]:self._obj_qadr[n] + 7].copy()
                        for n in SIM_OBJECTS if n not in objects}
                d.qpos[6:] = init_state
                for n, v in park.items():
                    d.qpos[self._obj_qadr[n]:self._obj_qadr[n] + 7] = v
            else:
                d.qpos[self._finger_qadr] = GRIPPER_HALF_OPEN
            home = self.home_q()
            d.qpos[:6] = home
            d.ctrl[:] = 0.0
            d.ctrl[self._grip_act] = d.qpos[self._finger_qadr[0]]
            self._q_from = home.copy()
            self._q_to = home.copy()
            self._ramp_t = 0.0
            self._ramp_T = 0.0
            mujoco.mj_forward(m, d)
            if layout is not None:
                from actquant_core.sim.tasks import REST_Z, SETTLE_S

                for obj, (x, y, yaw) in layout.items():
                    if obj not in objects:
                        raise ValueError(f"layout places {obj!r}, which is not among the active objects {objects}")
                    self.set_object_pose(obj, np.array([x, y, REST_Z[obj] + 0.001]), yaw)
                self.step(SETTLE_S)
                d.time = 0.0

    def set_arm_q(self, q: np.ndarray) -> None:
        """Teleport the arm to ``q`` [6] (rad, clipped to the limits) at rest, target = q."""
        q = np.clip(np.asarray(q, dtype=np.float64), self._lower, self._upper)
        if q.shape != (6,):
            raise ValueError(f"arm q must have shape (6,), got {q.shape}")
        with self.lock:
            self.data.qpos[:6] = q
            self.data.qvel[:6] = 0.0
            self._q_from = q.copy()
            self._q_to = q.copy()
            self._ramp_T = 0.0
            mujoco.mj_forward(self.model, self.data)

    def set_object_pose(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        """Place a free object at ``pos`` [3] (m, world) with a rotation ``yaw`` (rad) about z."""
        with self.lock:
            if name not in self._obj_qadr:
                raise ValueError(f"unknown object {name!r}; expected one of {SIM_OBJECTS}")
            a = self._obj_qadr[name]
            self.data.qpos[a:a + 3] = pos
            self.data.qpos[a + 3:a + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
            self.data.qvel[self._obj_vadr[name]:self._obj_vadr[name] + 6] = 0.0
            mujoco.mj_forward(self.model, self.data)

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World pose of an object: position [3] (m) and quaternion [4] (w, x, y, z)."""
        with self.lock:
            if name not in self._obj_qadr:
                raise ValueError(f"unknown object {name!r}; expected one of {SIM_OBJECTS}")
            a = self._obj_qadr[name]
            return self.data.qpos[a:a + 3].copy(), self.data.qpos[a + 3:a + 7].copy()

    def site_pos(self, name: str) -> np.ndarray:
        """World position [3] of a named site."""
        with self.lock:
            return self.data.site(name).xpos.copy()

    def in_contact(self, body_a: str, body_b: str) -> bool:
        """Whether any geom of body ``body_a`` touches a geom of body ``body_b``."""
        with self.lock:
            ia, ib = self.model.body(body_a).id, self.model.body(body_b).id
            gb = self.model.geom_bodyid
            for c in self.data.contact[: self.data.ncon]:
                b1, b2 = gb[c.geom1], gb[c.geom2]
                if (b1 == ia and b2 == ib) or (b1 == ib and b2 == ia):
                    return True
            return False

    # ------------------------------------------------------------------ control
    def set_joint_target(self, q: np.ndarray, duration: float = 0.0, qd: np.ndarray | None = None) -> np.ndarray:
        """Set the servo target.

        Args:
            q: joint target [6] (rad); clipped to the joint limits.
            duration: ramp time (s) from the current target to ``q`` (0 = step).  The ramp slope is
                fed forward as target velocity, so a stream of targets each ramped over one servo
                period is tracked with sub-mrad error.
            qd: optional target velocity [6] (rad/s) with ``duration == 0``: the target then moves on
                from ``q`` at ``qd`` for up to ``EXTRAPOLATE_S`` (first-order hold, no added delay).
        Returns:
            The clipped target [6] actually used.
        """
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (6,):
            raise ValueError(f"joint target must have shape (6,), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"joint target must be finite, got {q}")
        if duration < 0:
            raise ValueError(f"duration must be >= 0, got {duration}")
        qc = np.clip(q, self._lower, self._upper)
        if qd is not None:
            qd = np.asarray(qd, dtype=np.float64)
            if qd.shape != (6,) or not np.all(np.isfinite(qd)):
                raise ValueError(f"target velocity must be finite with shape (6,), got {qd}")
            if duration > 0:
                raise ValueError(f"give either duration ({duration}) or qd, not both")
        with self.lock:
            if qd is not None:
                self._q_from = qc
                self._q_to = np.clip(qc + qd * EXTRAPOLATE_S, self._lower, self._upper)
                self._ramp_T = EXTRAPOLATE_S
            else:
                self._q_from = self._target()[0]
                self._q_to = qc
                self._ramp_T = float(duration)
            self._ramp_t = 0.0
        return qc.copy()

    def set_gripper(self, open_fraction: float) -> float:
        """Gripper target in [0, 1] (0 closed, 1 open); returns the clipped value."""
        f = float(open_fraction)
        if not math.isfinite(f):
            raise ValueError(f"gripper target must be finite, got {open_fraction}")
        f = min(max(f, 0.0), 1.0)
        with self.lock:
            self.data.ctrl[self._grip_act] = f * GRIPPER_HALF_OPEN
        return f

    def hold(self) -> None:
        """Stop: freeze the target at the current joint positions."""
        with self.lock:
            q = self.data.qpos[:6].copy()
            self._q_from = q
            self._q_to = q
            self._ramp_T = 0.0

    def _target(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ramp_T <= 0.0 or self._ramp_t >= self._ramp_T:
            return self._q_to.copy(), np.zeros(6)
        s = self._ramp_t / self._ramp_T
        return self._q_from + s * (self._q_to - self._q_from), (self._q_to - self._q_from) / self._ramp_T

    def step(self, dt: float | None = None) -> None:
        """Advance physics by ``dt`` seconds (rounded to whole 2 ms substeps; default one substep)."""
        n = 1 if dt is None else max(1, int(round(dt / self.dt_physics)))
        with self.lock:
            if self._closed:
                raise RuntimeError("UR3World.step called after close()")
            m, d = self.model, self.data
            for _ in range(n):
                mujoco.mj_step1(m, d)
                q_des, qd_des = self._target()
                e = q_des - d.qpos[:6]
                ed = qd_des - d.qvel[:6]
                self._acc[:6] = self._kp * e + self._kd * ed
                mujoco.mj_mulM(m, d, self._macc, self._acc)
                tau = self._macc[:6] + d.qfrc_bias[:6] + self._damping * qd_des
                d.ctrl[:6] = np.clip(tau, -self._tau_max, self._tau_max)
                mujoco.mj_step2(m, d)
                self._ramp_t += self.dt_physics

    # ------------------------------------------------------------------ geometry
    def tcp_transform(self) -> np.ndarray:
        """4x4 pose of the TCP (grasp point between the finger pads) in the base (= world) frame."""
        with self.lock:
            T = np.eye(4)
            T[:3, :3] = self.data.site_xmat[self._tcp_site].reshape(3, 3)
            T[:3, 3] = self.data.site_xpos[self._tcp_site]
            return T

    def tcp_pose(self) -> np.ndarray:
        """TCP pose [6] = (x, y, z, rx, ry, rz) in the base frame, rotation vector as UR reports it."""
        T = self.tcp_transform()
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, T[:3, :3].reshape(-1))
        rv = np.zeros(3)
        mujoco.mju_quat2Vel(rv, quat, 1.0)
        return np.concatenate([T[:3, 3], rv])

    # ------------------------------------------------------------------ rendering
    def render(self, camera: str, size: int | None = None) -> np.ndarray:
        """Render one camera.

        Args:
            camera: one of ``SIM_CAMERAS`` ("base_0_rgb", "left_wrist_0_rgb").
            size: square image size in pixels (default: ``image_size``).
        Returns:
            uint8 [size, size, 3] RGB image.
        """
        if camera not in SIM_CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; expected one of {SIM_CAMERAS}")
        size = self.image_size if size is None else int(size)
        if size <= 0 or size > 640:
            raise ValueError(f"render size must be in (0, 640], got {size}")
        with self.lock:
            r = self._renderers.get(size)
            if r is None:
                try:
                    r = mujoco.Renderer(self.model, size, size)
                except mujoco.FatalError as e:
                    raise RuntimeError(
                        f"offscreen rendering unavailable (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {e}. "
                        "Import actquant_core.sim before mujoco, and install libegl1 libegl-mesa0 "
                        "libgl1-mesa-dri (egl) or libosmesa6 (MUJOCO_GL=osmesa).") from e
                self._renderers[size] = r
            r.update_scene(self.data, camera=camera)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
            try:
                return r.render().copy()
            finally:
                _release_gl_context()

    def close(self) -> None:
        """Release the renderers (GL contexts).  Idempotent."""
        with self.lock:
            for r in self._renderers.values():
                r.close()
                _release_gl_context()
            self._renderers.clear()
            self._closed = True

    def __enter__(self) -> "UR3World":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
