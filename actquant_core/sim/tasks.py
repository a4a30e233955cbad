"""Task suite in LIBERO's shape: 4 suites x 4 tasks, language instructions, seeded layouts, saved init
states, success predicates on privileged state.

Suites (see ``TASKS`` for the full list):
  * ``spatial`` - the same objects (a red cube, two identical bowls, a plate); which bowl is meant is
    only given by its place ("left", "closest to the robot", "next to the plate").
  * ``object``  - four coloured cubes, a bowl and a plate; the instruction names the cube.
  * ``goal``    - one scene (red cube, bowl, plate, mug, cabinet with a drawer), four different goals.
  * ``long``    - two-step goals in the scenes above.

A task's init states live in ``actquant_core/assets/sim/init_states/<suite>__<name>.npz`` (key
``qpos_world`` [N, nq - 6] = qpos without the arm joints; the arm starts at the home pose), regenerated
with ``python -m actquant_core.sim.tasks --regenerate``.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actquant_core.constants import SIM_OBJECTS, SIM_SUITES
from actquant_core.sim.mjcf import (
    ASSET_DIR,
    BOWL_HEIGHT,
    BOWL_RADIUS,
    CABINET_HALF,
    CUBE_HALF,
    MUG_HALF_HEIGHT,
    PLATE_RADIUS,
)

log = logging.getLogger(__name__)

INIT_STATE_DIR = ASSET_DIR / "init_states"
N_INIT_STATES = 50
INIT_SEED_BASE = 7000
SETTLE_S = 0.3

# Workspace rectangle (x_min, x_max, y_min, y_max) in the base frame, reachable top-down by UR3 and UR3e.
WORKSPACE = (-0.40, -0.17, -0.20, 0.13)
# Footprint radius (m) of each object, for the minimum-distance rule of the layout sampler.
FOOTPRINT = {"red_cube": 0.03, "green_cube": 0.03, "blue_cube": 0.03, "yellow_cube": 0.03,
             "bowl_1": 0.07, "bowl_2": 0.07, "plate": 0.078, "mug": 0.05}
REST_Z = {"red_cube": CUBE_HALF, "green_cube": CUBE_HALF, "blue_cube": CUBE_HALF, "yellow_cube": CUBE_HALF,
          "bowl_1": 0.0005, "bowl_2": 0.0005, "plate": 0.005, "mug": MUG_HALF_HEIGHT}
LAYOUT_GAP = 0.015  # free space between footprints (m)
DRAWER_OPEN_M = 0.09  # drawer counts as open beyond this (m); full travel 0.14


@dataclass(frozen=True)
class Place:
    """Subgoal: ``obj`` in/on ``target`` ("bowl_1", "bowl_2", "plate", "drawer").

    ``offset`` (m, world x/y) shifts the expert's release point (used when two objects share a bowl).
    """

    obj: str
    target: str
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.obj not in SIM_OBJECTS:
            raise ValueError(f"Place.obj must be one of {SIM_OBJECTS}, got {self.obj!r}")
        if self.target not in ("bowl_1", "bowl_2", "plate", "drawer"):
            raise ValueError(f"Place.target must be a bowl, the plate or the drawer, got {self.target!r}")


@dataclass(frozen=True)
class OpenDrawer:
    """Subgoal: the drawer is open by more than ``DRAWER_OPEN_M``."""


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        suite: one of ``SIM_SUITES``.
        name: short identifier, unique within the suite.
        instruction: the language instruction given to the policy.
        objects: objects on the table (the others are parked out of view).
        goals: subgoals, all of which must hold for success (the expert does them in order).
        regions: per-object sampling rectangle (x_min, x_max, y_min, y_max); default ``WORKSPACE``.
        near: (obj, anchor, max_dist): obj is sampled within max_dist of anchor (centre to centre).
        far: (obj, anchor, min_dist): obj is sampled at least min_dist from anchor.
        keep_drawer_clear: keep objects out of the drawer's path (tasks that open it).
        max_steps: episode length limit at 10 Hz.
    """

    suite: str
    name: str
    instruction: str
    objects: tuple[str, ...]
    goals: tuple
    regions: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()
    near: tuple[tuple[str, str, float], ...] = ()
    far: tuple[tuple[str, str, float], ...] = ()
    keep_drawer_clear: bool = False
    max_steps: int = 300
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.suite not in SIM_SUITES:
            raise ValueError(f"Task.suite must be one of {SIM_SUITES}, got {self.suite!r}")
        unknown = set(self.objects) - set(SIM_OBJECTS)
        if unknown:
            raise ValueError(f"Task {self.name!r}: unknown objects {sorted(unknown)}")
        for g in self.goals:
            if isinstance(g, Place) and (g.obj not in self.objects or
                                         (g.target != "drawer" and g.target not in self.objects)):
                raise ValueError(f"Task {self.name!r}: goal {g} uses an object not in {self.objects}")
        if not self.goals:
            raise ValueError(f"Task {self.name!r} needs at least one goal")
        if self.max_steps <= 0:
            raise ValueError(f"Task.max_steps must be > 0, got {self.max_steps}")

    @property
    def key(self) -> str:
        """``<suite>/<name>``."""
        return f"{self.suite}/{self.name}"

    @property
    def uses_drawer(self) -> bool:
        return self.keep_drawer_clear or any(isinstance(g, OpenDrawer) or
                                             (isinstance(g, Place) and g.target == "drawer")
                                             for g in self.goals)


_LEFT = (-0.38, -0.26, 0.05, 0.12)
_RIGHT = (-0.38, -0.26, -0.19, -0.09)
_MID_NEAR = (-0.24, -0.17, -0.06, 0.04)
_SPATIAL = ("red_cube", "bowl_1", "bowl_2", "plate")
_GOAL = ("red_cube", "bowl_1", "plate", "mug")
_CUBES = ("red_cube", "green_cube", "blue_cube", "yellow_cube")

TASKS: tuple[Task, ...] = (
    # ---- spatial: identical bowls, told apart by place only
    Task("spatial", "left_bowl", "put the red cube in the left bowl", _SPATIAL, (Place("red_cube", "bowl_1"),),
         regions=(("bowl_1", _LEFT), ("bowl_2", _RIGHT), ("red_cube", _MID_NEAR)), max_steps=220),
    Task("spatial", "right_bowl", "put the red cube in the right bowl", _SPATIAL, (Place("red_cube", "bowl_2"),),
         regions=(("bowl_1", _LEFT), ("bowl_2", _RIGHT), ("red_cube", _MID_NEAR)), max_steps=220),
    Task("spatial", "near_bowl", "put the red cube in the bowl closest to the robot", _SPATIAL,
         (Place("red_cube", "bowl_1"),),
         regions=(("bowl_1", (-0.23, -0.19, -0.16, 0.08)), ("bowl_2", (-0.40, -0.35, -0.16, 0.08))),
         max_steps=220),
    Task("spatial", "plate_bowl", "put the red cube in the bowl next to the plate", _SPATIAL,
         (Place("red_cube", "bowl_1"),), near=(("bowl_1", "plate", 0.17),), far=(("bowl_2", "plate", 0.24),),
         max_steps=220),
    # ---- object: which cube
    *(Task("object", f"{c.split('_')[0]}_cube_bowl", f"put the {c.split('_')[0]} cube in the bowl",
           _CUBES + ("bowl_1", "plate"), (Place(c, "bowl_1"),), max_steps=220) for c in _CUBES),
    # ---- goal: one scene, four goals
    Task("goal", "cube_in_bowl", "put the red cube in the bowl", _GOAL, (Place("red_cube", "bowl_1"),),
         keep_drawer_clear=True, max_steps=220),
    Task("goal", "cube_on_plate", "put the red cube on the plate", _GOAL, (Place("red_cube", "plate"),),
         keep_drawer_clear=True, max_steps=220),
    Task("goal", "open_drawer", "open the drawer", _GOAL, (OpenDrawer(),), keep_drawer_clear=True,
         max_steps=220),
    Task("goal", "mug_on_plate", "put the mug on the plate", _GOAL, (Place("mug", "plate"),),
         keep_drawer_clear=True, max_steps=220),
    # ---- long: two steps
    Task("long", "cube_bowl_cube_plate", "put the red cube in the bowl and the green cube on the plate",
         ("red_cube", "green_cube", "bowl_1", "plate"), (Place("red_cube", "bowl_1"), Place("green_cube", "plate")),
         max_steps=420),
    Task("long", "drawer_cube", "open the drawer and put the blue cube in it", ("blue_cube", "bowl_1"),
         (OpenDrawer(), Place("blue_cube", "drawer")), keep_drawer_clear=True, max_steps=420),
    Task("long", "two_cubes_bowl", "put the red cube and the yellow cube in the bowl",
         ("red_cube", "yellow_cube", "bowl_1", "plate"),
         (Place("red_cube", "bowl_1", (0.0, 0.027)), Place("yellow_cube", "bowl_1", (0.0, -0.027))), max_steps=420),
    Task("long", "mug_plate_cube_bowl", "put the mug on the plate and the green cube in the bowl",
         ("mug", "green_cube", "bowl_1", "plate"), (Place("mug", "plate"), Place("green_cube", "bowl_1")),
         keep_drawer_clear=True, max_steps=420),
)


def get_task(key: str) -> Task:
    """Task by ``"<suite>/<name>"``."""
    for t in TASKS:
        if t.key == key:
            return t
    raise KeyError(f"unknown task {key!r}; known: {[t.key for t in TASKS]}")


def suite_tasks(suite: str) -> tuple[Task, ...]:
    """Tasks of one suite, or of all suites for ``"all"``."""
    if suite == "all":
        return TASKS
    if suite not in SIM_SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected 'all' or one of {SIM_SUITES}")
    return tuple(t for t in TASKS if t.suite == suite)


# ------------------------------------------------------------------------------------ layout sampling
def _in_drawer_path(x: float, y: float, r: float) -> bool:
    # cabinet x-extent and the swept volume of the open drawer + handle (y from ~0.04 upwards)
    return (-0.42 - r < x < -0.18 + r) and y + r > 0.03


def sample_layout(task: Task, rng: np.random.Generator, max_tries: int = 2000) -> dict[str, tuple[float, float, float]]:
    """Object placements {name: (x, y, yaw)} that respect the task's regions and distance rules."""
    regions = dict(task.regions)
    near = {o: (a, d) for o, a, d in task.near}
    far = {o: (a, d) for o, a, d in task.far}
    # anchors first
    order = sorted(task.objects, key=lambda o: (o in near or o in far, o not in regions))
    for _ in range(max_tries):
        placed: dict[str, tuple[float, float, float]] = {}
        ok = True
        for obj in order:
            x0, x1, y0, y1 = regions.get(obj, WORKSPACE)
            r = FOOTPRINT[obj]
            for _ in range(200):
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                if task.keep_drawer_clear and _in_drawer_path(x, y, r):
                    continue
                if any(math.hypot(x - px, y - py) < r + FOOTPRINT[o] + LAYOUT_GAP for o, (px, py, _) in placed.items()):
                    continue
                if obj in near and math.hypot(x - placed[near[obj][0]][0], y - placed[near[obj][0]][1]) > near[obj][1]:
                    continue
                if obj in far and math.hypot(x - placed[far[obj][0]][0], y - placed[far[obj][0]][1]) < far[obj][1]:
                    continue
                placed[obj] = (x, y, float(rng.uniform(-math.pi / 4, math.pi / 4)))
                break
            else:
                ok = False
                break
        if ok:
            return placed
    raise RuntimeError(f"could not sample a layout for task {task.key} in {max_tries} tries")


def apply_layout(world, task: Task, layout: dict[str, tuple[float, float, float]]) -> None:
    """Reset ``world`` with ``task``'s objects at ``layout`` and let them settle."""
    world.reset(objects=task.objects, layout=layout)


def generate_init_states(world, task: Task, n: int = N_INIT_STATES, seed: int = INIT_SEED_BASE) -> np.ndarray:
    """Seeded init states [n, nq - 6] (qpos without the arm joints) after settling."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        apply_layout(world, task, sample_layout(task, rng))
        out.append(world.data.qpos[6:].copy())
    return np.stack(out)


def init_state_path(task: Task) -> Path:
    return INIT_STATE_DIR / f"{task.suite}__{task.name}.npz"


def load_init_states(task: Task) -> np.ndarray:
    """Saved init states [N, nq - 6] of ``task``."""
    path = init_state_path(task)
    if not path.exists():
        raise FileNotFoundError(f"no init states for {task.key} at {path}; run "
                                f"`python -m actquant_core.sim.tasks --regenerate`")
    with np.load(path) as z:
        return z["qpos_world"].copy()


# ------------------------------------------------------------------------------------ success
def _not_held(world, obj: str) -> bool:
    return not (world.in_contact("finger_1", obj) or world.in_contact("finger_2", obj))


def goal_satisfied(world, goal) -> bool:
    """Whether one subgoal holds in ``world``'s current state."""
    if isinstance(goal, OpenDrawer):
        return world.drawer > DRAWER_OPEN_M
    if not isinstance(goal, Place):
        raise TypeError(f"unknown goal type {type(goal).__name__}")
    p, _ = world.object_pose(goal.obj)
    if goal.target == "drawer":
        d_body = world.data.body("drawer")
        local = d_body.xmat.reshape(3, 3).T @ (p - d_body.xpos)
        hx, hy, hz = CABINET_HALF
        inside = abs(local[0]) < hx - 0.02 and abs(local[1]) < hy - 0.01 and local[2] < 0.05
        return inside and _not_held(world, goal.obj)
    t, _ = world.object_pose(goal.target)
    dxy = math.hypot(p[0] - t[0], p[1] - t[1])
    dz = p[2] - t[2]
    if goal.target.startswith("bowl"):
        ok = dxy < BOWL_RADIUS - 0.01 and -0.01 < dz < BOWL_HEIGHT + 0.03
    else:  # plate
        ok = dxy < PLATE_RADIUS and 0.0 < dz < REST_Z[goal.obj] + 0.03
    return ok and _not_held(world, goal.obj)


def task_success(world, task: Task) -> bool:
    """All of ``task``'s subgoals hold."""
    return all(goal_satisfied(world, g) for g in task.goals)


def main(argv: list[str] | None = None) -> None:
    from actquant_core.sim.world import UR3World

    parser = argparse.ArgumentParser(description="List tasks or regenerate their init-state files.")
    parser.add_argument("--regenerate", action="store_true", help="rewrite every init-state file")
    parser.add_argument("--n", type=int, default=N_INIT_STATES, help="init states per task")
    args = parser.parse_args(argv)
    if not args.regenerate:
        for t in TASKS:
            print(f"{t.key:32s} {t.instruction}")  # noqa: T201  (CLI listing)
        return
    INIT_STATE_DIR.mkdir(parents=True, exist_ok=True)
    world = UR3World("ur3")
    for t in TASKS:
        states = generate_init_states(world, t, args.n)
        np.savez_compressed(init_state_path(t), qpos_world=states.astype(np.float64))
        log.info("%s: %d init states -> %s", t.key, len(states), init_state_path(t))
    world.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
