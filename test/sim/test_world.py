"""UR3World: DH kinematics, servo tracking, clipping, rendering."""

from __future__ import annotations

import numpy as np
import pytest

from actquant_core.constants import SIM_ARM_JOINTS, SIM_CAMERA_BASE, SIM_CAMERA_WRIST
from actquant_core.sim.ik import solve_ik
from actquant_core.sim.mjcf import UR_SPECS, build_scene_xml, dh_forward, scene_path
from actquant_core.sim.world import UR3World

FK_TOL = 1e-9  # m / rotation-matrix entries: MuJoCo FK vs closed-form DH
TRACK_TOL = 5e-3  # rad: servoJ-style sinusoid tracking error
SETTLE_TOL = 1e-3  # rad: step response after 0.5 s
IK_TOL = 1e-4  # weighted pose error after IK


@pytest.fixture(scope="module", params=["ur3", "ur3e"])
def world(request):
    w = UR3World(request.param)
    yield w
    w.close()


def test_committed_xml_is_generated(world):
    assert scene_path(world.model_name).read_text() == build_scene_xml(world.model_name), \
        "regenerate with `python -m actquant_core.sim.mjcf`"


def test_arm_joints_first(world):
    m = world.model
    assert [m.joint(i).name for i in range(6)] == list(SIM_ARM_JOINTS)
    assert [int(m.jnt_qposadr[i]) for i in range(6)] == list(range(6))


def test_mujoco_fk_matches_dh(world):
    rng = np.random.default_rng(0)
    spec = UR_SPECS[world.model_name]
    d = world._scratch
    import mujoco

    for _ in range(5):
        q = rng.uniform(-3, 3, 6)
        d.qpos[:6] = q
        mujoco.mj_kinematics(world.model, d)
        T = dh_forward(spec, q)
        b = world.model.body("flange").id
        np.testing.assert_allclose(d.xpos[b], T[:3, 3], atol=FK_TOL)
        np.testing.assert_allclose(d.xmat[b].reshape(3, 3), T[:3, :3], atol=FK_TOL)


def test_servo_tracks_sinusoid_at_controller_rate(world):
    world.reset()
    q0 = world.home_q()
    rate = world.control_rate_hz
    errs = []
    for k in range(int(1.5 * rate)):
        t = k / rate
        target = q0 + 0.3 * np.sin(2 * np.pi * 0.5 * t) * np.array([1, 0.5, -0.5, 1, 1, 1])
        world.set_joint_target(target, duration=1 / rate)
        world.step(1 / rate)
        if t > 0.3:
            errs.append(np.abs(world.q - target).max())
    assert max(errs) < TRACK_TOL


def test_step_target_settles_and_clips(world):
    world.reset()
    target = world.home_q() + np.array([0.2, -0.1, 0.1, 0.2, -0.2, 0.3])
    world.set_joint_target(target)
    world.step(0.5)
    assert np.abs(world.q - target).max() < SETTLE_TOL
    sent = world.set_joint_target(np.array([10.0, 0, 0, 0, 0, 0]))
    assert sent[0] == pytest.approx(UR_SPECS[world.model_name].upper[0])
    with pytest.raises(ValueError, match="shape"):
        world.set_joint_target(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        world.set_joint_target(np.full(6, np.nan))


def test_ik_reaches_fk_poses(world):
    rng = np.random.default_rng(1)
    q_home = world.home_q()
    for _ in range(5):
        q_true = q_home + rng.uniform(-0.3, 0.3, 6)
        world._scratch.qpos[:6] = q_true
        import mujoco

        mujoco.mj_kinematics(world.model, world._scratch)
        p = world._scratch.site_xpos[world._tcp_site].copy()
        R = world._scratch.site_xmat[world._tcp_site].reshape(3, 3).copy()
        _, err = solve_ik(world, p, R, q_home, iters=100)
        assert err < IK_TOL


def test_render_shape_and_determinism(world):
    world.reset()
    a = world.render(SIM_CAMERA_BASE, 96)
    b = world.render(SIM_CAMERA_BASE, 96)
    w = world.render(SIM_CAMERA_WRIST, 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.std() > 10 and w.std() > 5  # not blank
    assert np.abs(a.astype(int) - w.astype(int)).mean() > 10  # different viewpoints
    world.set_joint_target(world.home_q() + 0.3)
    world.step(0.3)
    c = world.render(SIM_CAMERA_BASE, 96)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 50  # the arm moved in the image
    with pytest.raises(ValueError, match="unknown camera"):
        world.render("nope")


def test_seeded_task_layouts():
    a = UR3World("ur3", task="goal/open_drawer", seed=3)
    b = UR3World("ur3", task="goal/open_drawer", seed=3)
    c = UR3World("ur3", task="goal/open_drawer", seed=4)
    try:
        np.testing.assert_array_equal(a.data.qpos, b.data.qpos)
        assert np.abs(a.data.qpos - c.data.qpos).max() > 1e-3
        assert a.time == 0.0 and np.abs(a.q - a.home_q()).max() < SETTLE_TOL
        # objects of the task rest on the table (z > 0), the others are parked below it
        for name in ("red_cube", "mug"):
            assert a.object_pose(name)[0][2] > 0.0
        assert a.object_pose("green_cube")[0][2] < -0.1
    finally:
        for w in (a, b, c):
            w.close()


def test_render_from_another_thread():
    """The ursim control thread and a camera thread may both use one world."""
    import threading

    w = UR3World("ur3")
    try:
        main = w.render(SIM_CAMERA_BASE, 64)
        out = {}

        def worker():
            try:
                out["img"] = w.render(SIM_CAMERA_BASE, 64)
            except Exception as e:  # reported below
                out["err"] = e

        t = threading.Thread(target=worker)
        t.start()
        t.join(timeout=30)
        assert "err" not in out, out.get("err")
        np.testing.assert_array_equal(out["img"], main)
        np.testing.assert_array_equal(w.render(SIM_CAMERA_BASE, 64), main)
    finally:
        w.close()


@pytest.mark.parametrize("mode", ["ramp", "velocity"])
def test_stream_tracking_modes(mode):
    """servoJ-style stream at 500 Hz: ramped targets or targets with a velocity are tracked closely."""
    w = UR3World("ur3e")
    try:
        q0 = w.home_q()
        rate = w.control_rate_hz
        errs = []
        for k in range(int(1.0 * rate)):
            t = k / rate
            target = q0 + 0.3 * np.sin(2 * np.pi * 0.5 * t) * np.ones(6)
            vel = 0.3 * 2 * np.pi * 0.5 * np.cos(2 * np.pi * 0.5 * t) * np.ones(6)
            if mode == "ramp":
                w.set_joint_target(target, duration=1 / rate)
                ref_end = target
            else:
                w.set_joint_target(target, qd=vel)
                ref_end = target + vel / rate
            w.step(1 / rate)
            if t > 0.3:
                errs.append(np.abs(w.q - ref_end).max())
        assert max(errs) < TRACK_TOL
    finally:
        w.close()
