"""The simulator's parts without sockets: forward kinematics, trajectory generator, RTDE recipes, the
control-script emulation driven register by register (the way ur_rtde drives the real script)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from actquant_core import constants as C
from actquant_core.sim.ursim.backends import KinematicBackend
from actquant_core.sim.ursim.config import MODELS, UrSimConfig
from actquant_core.sim.ursim.controller import Controller, RegisterProgram, RtdeControlProgram, parse_program
from actquant_core.sim.ursim.kinematics import _fk_matrix_reference, fk_matrix, rotvec_from_matrix, tcp_pose
from actquant_core.sim.ursim.motion import MODE_IDLE, JointMotion
from actquant_core.sim.ursim.protocol import INPUT_TYPES, OUTPUT_TYPES, make_recipe, unpack_inputs

FK_TOL = 1e-12  # m / rad: two exact formulations of the same product
MOVE_END_TOL = 1e-12  # rad: movej ends exactly on its goal
DT_E = 1.0 / 500.0

# The control script as ur_rtde uploads it, reduced to the parts the simulator reads.
SCRIPT_TEMPLATE = """def rtde_control():
    global reg_offset_float = # float register offset
{offset}
    global reg_offset_int = # int register offset
{offset}
    def rtde_cmd():
      cmd = read_input_integer_reg(0)
      return cmd
    end
end
"""


def _controller(model: str = "ur3e") -> Controller:
    cfg = UrSimConfig(model=model)
    return Controller(cfg, KinematicBackend(np.asarray(cfg.initial_q)))


def test_fk_matches_dh_product_and_zero_pose():
    rng = np.random.default_rng(0)
    for name, model in MODELS.items():
        for _ in range(50):
            q = rng.uniform(-math.pi, math.pi, 6)
            np.testing.assert_allclose(fk_matrix(model, q), _fk_matrix_reference(model, q), atol=FK_TOL)
        d, a = model.dh_d, model.dh_a
        expected = [a[1] + a[2], -(d[3] + d[5]), d[0] - d[4], math.pi / 2, 0.0, 0.0]
        np.testing.assert_allclose(tcp_pose(model, np.zeros(6)), expected, atol=FK_TOL, err_msg=name)


def test_rotvec_roundtrip_including_180_degrees():
    for axis, angle in [((0, 0, 1), 0.3), ((1, 1, 0), 2.0), ((0, 1, 0), math.pi), ((1, 0, 0), 1e-12)]:
        n = np.asarray(axis, float) / np.linalg.norm(axis)
        K = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
        R = np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
        w = rotvec_from_matrix(R)
        if angle < 1e-9:
            assert np.allclose(w, 0.0)
        elif abs(angle - math.pi) < 1e-9:
            assert np.allclose(np.abs(w), np.abs(n * angle), atol=1e-6)
        else:
            np.testing.assert_allclose(w, n * angle, atol=1e-9)


def test_movej_trapezoid_duration_and_endpoint():
    model = MODELS["ur3e"]
    m = JointMotion(model, np.zeros(6))
    goal = np.array([0.5, -0.25, 0.1, 0.0, 0.0, 0.0])
    v, a = 1.0, 2.0
    m.move(goal, v, a)
    t, peak = 0.0, 0.0
    while m.mode != MODE_IDLE:
        q, qd, _ = m.step(DT_E)
        peak = max(peak, float(np.max(np.abs(qd))))
        t += DT_E
        assert t < 5.0
    assert abs(t - (0.5 / v + v / a)) <= DT_E  # cruise 0.5 rad at v plus the two ramps
    np.testing.assert_allclose(m.q, goal, atol=MOVE_END_TOL)
    assert peak == pytest.approx(v, abs=1e-9)


def test_servo_step_settles_without_overshoot_within_limits():
    model = MODELS["ur3e"]
    m = JointMotion(model, np.zeros(6))
    target = np.array([0.8, 0.0, 0.0, 0.0, 0.0, -0.8])
    qds = []
    for _ in range(1000):  # 2 s
        m.servo(target, DT_E, 0.1, 300.0, DT_E)
        q, qd, qdd = m.step(DT_E)
        qds.append(qd)
        assert np.all(np.abs(qd) <= np.asarray(model.v_max) + 1e-9)
        assert np.all(np.abs(qdd) <= np.asarray(model.a_max) + 1e-6)
        assert q[0] <= target[0] + 1e-12 and q[5] >= target[5] - 1e-12  # never past the target
    np.testing.assert_allclose(m.q, target, atol=1e-6)


def test_stop_decelerates_at_the_given_rate():
    m = JointMotion(MODELS["ur3"], np.zeros(6))
    m.speed(np.array([1.0, 0, 0, 0, 0, 0]), 100.0)
    for _ in range(10):
        m.step(0.008)
    assert m.qd[0] == pytest.approx(1.0)
    m.stop(5.0)
    n = 0
    while m.mode != MODE_IDLE:
        m.step(0.008)
        n += 1
    assert n == math.ceil(1.0 / 5.0 / 0.008)


def test_recipes_types_and_input_unpacking():
    out = make_recipe(1, ["timestamp", "actual_q", "joint_mode", "runtime_state", "actual_digital_output_bits"],
                      OUTPUT_TYPES)
    assert out.types == ("DOUBLE", "VECTOR6D", "VECTOR6INT32", "UINT32", "UINT64")
    assert out.codec.size == 1 + 8 + 48 + 24 + 4 + 8
    bad = make_recipe(2, ["actual_q", "no_such_variable"], OUTPUT_TYPES)
    assert not bad.usable and bad.types_answer() == b"VECTOR6D,NOT_FOUND"
    rin = make_recipe(3, ["input_int_register_23", "standard_digital_output_mask", "standard_digital_output"],
                      INPUT_TYPES)
    body = struct.pack(">BiBB", 3, 13, 0b1, 0b1)
    assert unpack_inputs(rin, body) == {"input_int_register_23": 13, "standard_digital_output_mask": 1,
                                        "standard_digital_output": 1}


def test_parse_program_reads_register_offset_and_custom_functions():
    for offset in (0, 24):
        prog = parse_program(SCRIPT_TEMPLATE.format(offset=offset))
        assert isinstance(prog, RtdeControlProgram) and prog.off == offset and prog.name == "rtde_control"
    custom = ("def f():\n\twrite_output_integer_register(0 +0, 1)\n\ttextmsg(1)\n"
              "\twrite_output_integer_register(0 +0, 2)\nend\n")
    prog = parse_program(custom)
    assert isinstance(prog, RegisterProgram) and prog.name == "f"
    ctrl = _controller()
    assert prog.step(ctrl) and ctrl.int_out[0] == 1
    assert prog.step(ctrl) and ctrl.int_out[0] == 2
    assert not prog.step(ctrl)


def test_control_script_handshake_like_ur_rtde():
    """Drive the emulated script the way RTDEControlInterface does: command, wait done, clear, wait ready."""
    ctrl = _controller()
    assert ctrl.load_program(SCRIPT_TEMPLATE.format(offset=0))
    ctrl._cycle()
    assert ctrl.int_out[0] == C.URSIM_CONTROLLER_READY
    goal = np.asarray(ctrl.cfg.initial_q) + np.array([0.1, 0, 0, 0, 0, 0])
    ctrl.write_inputs({"input_int_register_0": C.URSIM_CMD_MOVEJ, **{f"input_double_register_{i}": float(goal[i])
                       for i in range(6)}, "input_double_register_6": 1.0, "input_double_register_7": 4.0,
                       "input_int_register_1": 0})
    n = 0
    while ctrl.int_out[0] != C.URSIM_CONTROLLER_DONE:
        ctrl._cycle()
        n += 1
        assert n < 1000
    np.testing.assert_allclose(ctrl.backend.q, goal, atol=MOVE_END_TOL)
    ctrl._cycle()
    assert ctrl.int_out[0] == C.URSIM_CONTROLLER_DONE  # stays done until the client clears the command
    ctrl.write_inputs({"input_int_register_0": C.URSIM_CMD_NO_CMD})
    ctrl._cycle()
    assert ctrl.int_out[0] == C.URSIM_CONTROLLER_READY
    # real-time command: answered "ready" in the same cycle, motion follows
    ctrl.write_inputs({"input_int_register_0": C.URSIM_CMD_SPEEDJ, "input_double_register_0": 0.5,
                       **{f"input_double_register_{i}": 0.0 for i in range(1, 6)},
                       "input_double_register_6": 100.0, "input_double_register_7": 0.0})
    ctrl._cycle()
    assert ctrl.int_out[0] == C.URSIM_CONTROLLER_READY and ctrl.backend.qd[0] > 0
    # an unsupported command stops the program like a URScript runtime error
    ctrl.write_inputs({"input_int_register_0": 45})
    ctrl._cycle()
    assert ctrl.runtime_state == C.URSIM_RUNTIME_STOPPED and ctrl.program is None


def test_protective_stop_pauses_and_blocks_program_start():
    ctrl = _controller()
    assert ctrl.load_program(SCRIPT_TEMPLATE.format(offset=0))
    ctrl._cycle()
    ctrl.protective_stop("test")
    assert ctrl.runtime_state == C.URSIM_RUNTIME_PAUSED
    assert ctrl._safety_bits() & (1 << C.RTDE_SAFETY_BIT_PROTECTIVE_STOP)
    assert not ctrl.load_program(SCRIPT_TEMPLATE.format(offset=0))
    assert ctrl.unlock_protective_stop().startswith("Cannot unlock")  # 5 s rule of the real controller
    assert ctrl.unlock_protective_stop(force=True) == "Protective stop releasing"
    assert ctrl.load_program(SCRIPT_TEMPLATE.format(offset=0))


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="model='ur5'"):
        UrSimConfig(model="ur5")
    with pytest.raises(ValueError, match="not a loopback"):
        UrSimConfig(host="10.0.0.2")
    with pytest.raises(ValueError, match="initial_q"):
        UrSimConfig(initial_q=(0.0,) * 5)
