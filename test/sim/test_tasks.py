"""Task suite shape, saved init states, success predicates and scripted experts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actquant_core.constants import SIM_SUITES
from actquant_core.sim.env import SimEnv, SimEnvConfig
from actquant_core.sim.expert import QD_MAX_UR3, ScriptedExpert
from actquant_core.sim.tasks import (
    N_INIT_STATES,
    TASKS,
    generate_init_states,
    get_task,
    load_init_states,
    suite_tasks,
    task_success,
)

INIT_STATE_TOL = 1e-6  # regenerated vs committed init state (same seed)


def test_suite_shape():
    assert len(SIM_SUITES) >= 4
    for suite in SIM_SUITES:
        assert len(suite_tasks(suite)) >= 4
    for suite in SIM_SUITES:
        instructions = [t.instruction for t in suite_tasks(suite)]
        assert len(set(instructions)) == len(instructions)
    with pytest.raises(KeyError, match="unknown task"):
        get_task("spatial/nope")


@pytest.mark.parametrize("task", TASKS, ids=[t.key for t in TASKS])
def test_init_state_files(task):
    states = load_init_states(task)
    assert states.shape[0] == N_INIT_STATES
    assert np.all(np.isfinite(states))
    assert len({s.tobytes() for s in states}) == N_INIT_STATES  # all layouts differ


def test_init_states_are_reproducible():
    task = get_task("object/red_cube_bowl")
    env = SimEnv(task, SimEnvConfig(render=False))
    try:
        regenerated = generate_init_states(env.world, task, n=2)
        np.testing.assert_allclose(regenerated, load_init_states(task)[:2], atol=INIT_STATE_TOL,
                                   err_msg="regenerate with `python -m actquant_core.sim.tasks --regenerate`")
    finally:
        env.close()


def _run_expert(key: str, init_index: int, qd_max: float | None = None, actions: list | None = None) -> tuple[bool, int]:
    task = get_task(key)
    env = SimEnv(task, SimEnvConfig(render=False))
    try:
        env.reset(init_index)
        assert not env.success()  # a fresh layout is not already solved
        expert = ScriptedExpert(env.world, task, qd_max=qd_max)
        while True:
            a = expert.act()
            if actions is not None:
                actions.append(a)
            _, ok, done = env.step(a, observe=False)
            if done:
                return ok, env.steps
    finally:
        env.close()


JOINT_SPEED_SLACK = 1e-6  # rad/s over the cap (float rounding of the clipped step)


@pytest.mark.parametrize("key,init_index", [("goal/mug_on_plate", 5), ("long/drawer_cube", 1)])
def test_expert_joint_speed_cap(key, init_index):
    """With qd_max the expert's joint targets never move faster than the cap and it still succeeds; the
    uncapped expert on the same layout does exceed it (so the cap is what keeps it under)."""
    capped, free = [], []
    ok, steps = _run_expert(key, init_index, qd_max=QD_MAX_UR3, actions=capped)
    assert ok, f"capped expert failed on {key} init {init_index} after {steps} steps"
    _run_expert(key, init_index, actions=free)
    dt = 1.0 / SimEnvConfig().policy_hz
    speed = lambda acts: np.abs(np.diff(np.asarray(acts)[:, :6], axis=0)).max() / dt  # noqa: E731
    assert speed(capped) <= QD_MAX_UR3 + JOINT_SPEED_SLACK, speed(capped)
    assert speed(free) > QD_MAX_UR3, speed(free)
    with pytest.raises(ValueError, match="qd_max"):
        ScriptedExpert(None, get_task(key), qd_max=0.0)


def test_dart_action_noise_perturbs_execution_not_labels():
    """With action_noise the arm executes perturbed targets (AR(1), about the requested size, arm joints only)
    while the recorded labels are the expert's own targets; the expert still succeeds; 0 executes the labels."""
    from actquant_core.sim.demos import DemoConfig, record_episode

    task = get_task("spatial/right_bowl")
    env = SimEnv(task, SimEnvConfig(render=False))
    try:
        runs = {}
        for noise in (0.0, 0.04):
            executed = []
            fields, ok = record_episode(env, ScriptedExpert, (3, 1, 0), None, None, noise,
                                        np.random.default_rng(0), executed)
            assert ok, f"expert failed with action_noise={noise}"
            runs[noise] = (np.asarray(executed), fields["action"].astype(np.float64))
        ex0, lab0 = runs[0.0]
        np.testing.assert_allclose(ex0, lab0, atol=1e-6)
        ex, lab = runs[0.04]
        d = ex[:, :6] - lab[:, :6]
        moving = np.abs(d).max(axis=1) > 1e-5  # labels are float32 copies of the executed float64 targets
        assert 0.3 < moving.mean() < 0.95, moving.mean()  # perturbed in motion only, clean while settling
        assert len(lab) < 1.5 * len(lab0), (len(lab), len(lab0))  # no long settle stalls
        dm = d[moving]
        assert 0.02 < dm.std() < 0.06, dm.std()          # stationary std ~ 0.04 rad
        assert np.abs(d).max() < 6 * 0.04
        np.testing.assert_allclose(ex[:, 6], lab[:, 6], atol=1e-6)  # gripper untouched
        assert np.corrcoef(dm[:-1].ravel(), dm[1:].ravel())[0, 1] > 0.5  # correlated in time
        with pytest.raises(ValueError, match="noise_rng"):
            record_episode(env, ScriptedExpert, (3, 1, 0), None, None, 0.04, None)
    finally:
        env.close()
    with pytest.raises(ValueError, match="action_noise"):
        DemoConfig(out=Path("/tmp/x"), action_noise=-0.1)


@pytest.mark.parametrize("key,init_index", [("spatial/right_bowl", 3), ("goal/open_drawer", 0),
                                            ("goal/mug_on_plate", 5)])
def test_expert_succeeds(key, init_index):
    ok, steps = _run_expert(key, init_index)
    assert ok, f"expert failed on {key} init {init_index} after {steps} steps"
    assert steps < get_task(key).max_steps


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS, ids=[t.key for t in TASKS])
def test_expert_success_rate(task):
    oks = [_run_expert(task.key, i)[0] for i in range(N_INIT_STATES)]
    assert np.mean(oks) >= 0.95


def test_success_predicate_needs_the_right_bowl():
    task = get_task("spatial/left_bowl")
    env = SimEnv(task, SimEnvConfig(render=False))
    try:
        env.reset(0)
        w = env.world
        for bowl, expected in (("bowl_2", False), ("bowl_1", True)):
            p, _ = w.object_pose(bowl)
            w.set_object_pose("red_cube", p + np.array([0.0, 0.0, 0.03]))
            w.step(0.3)
            assert task_success(w, task) is expected
    finally:
        env.close()
