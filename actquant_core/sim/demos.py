"""Demonstration generation with the scripted experts, in parallel processes.

    python -m actquant_core.sim.demos --suite all --episodes-per-task N --out DIR --workers K

writes ``DIR/lerobot/`` (LeRobot-style dataset, see ``sim/episodes.py``) and, for the first
``--bag-episodes-per-task`` episodes of every task, ``DIR/rosbag2_mcap/episode_*/`` and
``DIR/rosbag2_sqlite3/episode_*/`` (~30 MB per 100-frame bag at 224 px, so bags are a sample meant for
calibration and replay; pass ``--bag-episodes-per-task -1`` for all).

Layouts are drawn from a seed stream disjoint from the saved evaluation init states (``--seed``), unless
``--from-init-states`` is given.  A failed expert episode is retried with the next seed of its slot
(at most ``MAX_ATTEMPTS``), so the dataset holds successful episodes only; ``DIR/demos_report.json``
lists per-task success counts and attempts.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actquant_core.constants import SIM_CAMERAS

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
EPISODES_PER_JOB = 5


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one generation run.

    Attributes:
        out: output folder.
        suite: "all" or one suite name.
        episodes_per_task: successful episodes per task.
        workers: parallel processes.
        model: "ur3" or "ur3e".
        image_size: square camera image size (pixels).
        fps: policy / recording rate (Hz).
        seed: base seed of the layout stream.
        formats: subset of ("lerobot", "mcap", "sqlite3").
        bag_episodes_per_task: bags are written for the first this many episodes of each task (-1 = all).
        chunk: actions per /action_chunk message.
        from_init_states: use the saved evaluation init states instead of fresh layouts.
        task_keys: restrict to these "<suite>/<name>" tasks (empty = every task of ``suite``).
        compress: zlib-compress the LeRobot-style episode files (off: ~5x larger, much faster to read back).
        qd_max: cap on the expert's joint speed (rad/s), None = uncapped.
        action_noise: DART-style perturbation (rad): while the expert moves its set point, the arm executes
            the expert's joint targets plus an AR(1) noise of this stationary standard deviation (correlation
            ``NOISE_RHO`` per step), and the recorded action stays the expert's clean target. The
            demonstrations then visit states around the expert's path with labels that lead back to it, which
            teaches a cloned policy to recover from its own drift. Settle, gripper and hold steps execute the
            clean target: perturbed there, the expert's settle check (measured TCP within 6 mm) never passes
            and the data fills with long stationary stretches, which a cloned policy learns as "stay" (a first
            run with noise everywhere scored 0/64). 0 = off (the data the bundled policies were trained on).
            Episodes the noise makes fail are retried like any failed attempt.
    """

    out: Path
    suite: str = "all"
    episodes_per_task: int = 10
    workers: int = 2
    model: str = "ur3"
    image_size: int = 224
    fps: float = 10.0
    seed: int = 0
    formats: tuple[str, ...] = ("lerobot", "mcap", "sqlite3")
    bag_episodes_per_task: int = 2
    chunk: int = 10
    from_init_states: bool = False
    task_keys: tuple[str, ...] = ()
    compress: bool = True
    qd_max: float | None = None
    action_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        bad = set(self.formats) - {"lerobot", "mcap", "sqlite3"}
        if bad or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of lerobot, mcap, sqlite3; got {self.formats}")
        if self.bag_episodes_per_task < -1:
            raise ValueError(f"bag_episodes_per_task must be >= -1, got {self.bag_episodes_per_task}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if self.qd_max is not None and not self.qd_max > 0:
            raise ValueError(f"qd_max must be > 0 rad/s or None, got {self.qd_max}")
        if not (np.isfinite(self.action_noise) and 0.0 <= self.action_noise <= MAX_ACTION_NOISE):
            raise ValueError(f"action_noise must be in [0, {MAX_ACTION_NOISE}] rad, got {self.action_noise}")


NOISE_RHO = 0.8  # per-step correlation of the DART perturbation (AR(1))
MAX_ACTION_NOISE = 0.2  # rad; beyond this the perturbation is no longer "around the expert's path"


def record_episode(env, expert_cls, layout_seed: tuple[int, ...] | None, init_index: int | None,
                   qd_max: float | None = None, action_noise: float = 0.0,
                   noise_rng: np.random.Generator | None = None, executed: list | None = None):
    """Run the expert once; returns (Episode fields dict, success).

    ``layout_seed`` draws a fresh layout (``sample_layout``); otherwise ``init_index`` picks a saved init
    state. ``action_noise`` > 0 perturbs the executed arm targets while the expert is in motion (see
    ``DemoConfig.action_noise``; drawn from ``noise_rng``); the recorded actions are the expert's.
    ``executed`` (a list) receives the commands actually sent.
    """
    task = env.task
    obs = env.reset(init_index, layout_seed=layout_seed)
    expert = expert_cls(env.world, task, policy_hz=env.config.policy_hz, qd_max=qd_max)
    images = {c: [] for c in obs["images"]}
    states, actions = [], []
    ok = False
    if action_noise > 0 and noise_rng is None:
        raise ValueError("record_episode: action_noise > 0 needs a noise_rng")
    innov = action_noise * np.sqrt(1.0 - NOISE_RHO**2)
    n = np.zeros(6) if action_noise <= 0 else noise_rng.normal(0.0, action_noise, 6)
    while True:
        a = expert.act()
        for c, img in obs["images"].items():
            images[c].append(img)
        states.append(obs["state"])
        actions.append(a.astype(np.float32))
        cmd = a
        if action_noise > 0:
            if getattr(expert, "in_motion", True):
                cmd = a.copy()
                cmd[:6] += n
            n = NOISE_RHO * n + noise_rng.normal(0.0, innov, 6)
        if executed is not None:
            executed.append(cmd)
        obs, ok, done = env.step(cmd)
        if done:
            break
    return {"images": {c: np.stack(v) for c, v in images.items()}, "state": np.stack(states),
            "action": np.stack(actions)}, bool(ok)


def _job(args: tuple) -> list[dict]:
    """Worker: record the episodes of one (task, slot range) job and write them."""
    cfg, task_key, task_index, slots = args
    # one llvmpipe render thread per worker: the workers already use every core
    os.environ.setdefault("LP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(message)s")
    from actquant_core.sim.env import SimEnv, SimEnvConfig
    from actquant_core.sim.episodes import Episode, write_bag, write_lerobot_episode
    from actquant_core.sim.expert import ScriptedExpert
    from actquant_core.sim.tasks import get_task

    task = get_task(task_key)
    env = SimEnv(task, SimEnvConfig(model=cfg.model, image_size=cfg.image_size, render=True, policy_hz=cfg.fps))
    n_init = len(env.init_states) if cfg.from_init_states else 0
    out = []
    try:
        for slot in slots:
            ep_index = task_index * cfg.episodes_per_task + slot
            for attempt in range(MAX_ATTEMPTS):
                seed_t = (cfg.seed, task_index, slot, attempt)
                noise_rng = np.random.default_rng([*seed_t, 1])
                if cfg.from_init_states:
                    init_index = (slot + attempt * cfg.episodes_per_task) % n_init
                    fields, ok = record_episode(env, ScriptedExpert, None, init_index, cfg.qd_max,
                                                cfg.action_noise, noise_rng)
                    seed = init_index
                else:
                    fields, ok = record_episode(env, ScriptedExpert, seed_t, None, cfg.qd_max,
                                                cfg.action_noise, noise_rng)
                    seed = int(np.random.default_rng(list(seed_t)).integers(2**31))
                if ok:
                    break
            ep = Episode(instruction=task.instruction, fps=cfg.fps, key=task.key, index=ep_index, success=ok,
                         seed=seed, **fields)
            if not ok:
                log.warning("%s slot %d: expert failed %d times; episode %d kept with success=False",
                            task.key, slot, MAX_ATTEMPTS, ep_index)
            if "lerobot" in cfg.formats:
                write_lerobot_episode(cfg.out / "lerobot", ep, task_index, compress=cfg.compress)
            if cfg.bag_episodes_per_task < 0 or slot < cfg.bag_episodes_per_task:
                for storage in ("mcap", "sqlite3"):
                    if storage in cfg.formats:
                        bag = cfg.out / f"rosbag2_{storage}" / f"episode_{ep_index:06d}"
                        if bag.exists():
                            import shutil

                            shutil.rmtree(bag)
                        write_bag(bag, ep, storage, cfg.chunk)
            out.append({"episode_index": ep_index, "task_index": task_index, "task": task.instruction,
                        "key": task.key, "length": len(ep), "success": ok, "seed": seed,
                        "attempts": attempt + 1})
    finally:
        env.close()
    return out


def generate(cfg: DemoConfig) -> dict:
    """Generate the demonstrations; returns the report (also written to ``out/demos_report.json``)."""
    from actquant_core.sim.episodes import write_lerobot_meta
    from actquant_core.sim.tasks import suite_tasks

    tasks = suite_tasks(cfg.suite)
    if cfg.task_keys:
        unknown = set(cfg.task_keys) - {t.key for t in tasks}
        if unknown:
            raise ValueError(f"tasks {sorted(unknown)} are not in suite {cfg.suite!r}")
        tasks = tuple(t for t in tasks if t.key in cfg.task_keys)
    cfg.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for ti, task in enumerate(tasks):
        slots = list(range(cfg.episodes_per_task))
        for k in range(0, len(slots), EPISODES_PER_JOB):
            jobs.append((cfg, task.key, ti, slots[k:k + EPISODES_PER_JOB]))
    t0 = time.time()
    episodes: list[dict] = []
    if cfg.workers == 1:
        for j in jobs:
            episodes.extend(_job(j))
    else:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for res in pool.imap_unordered(_job, jobs):
                episodes.extend(res)
                log.info("%d/%d episodes done (%.0f s)", len(episodes), len(tasks) * cfg.episodes_per_task,
                         time.time() - t0)
    task_rows = [{"task_index": i, "task": t.instruction, "key": t.key} for i, t in enumerate(tasks)]
    if "lerobot" in cfg.formats:
        write_lerobot_meta(cfg.out / "lerobot", episodes, task_rows, cfg.fps, cfg.image_size, cfg.model, SIM_CAMERAS)
    per_task = {}
    for t in tasks:
        rows = [e for e in episodes if e["key"] == t.key]
        per_task[t.key] = {"episodes": len(rows), "successful": sum(e["success"] for e in rows),
                           "attempts": sum(e["attempts"] for e in rows),
                           "mean_length": float(np.mean([e["length"] for e in rows]))}
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
              "wall_s": time.time() - t0, "per_task": per_task,
              "expert_first_try_success": sum(e["attempts"] == 1 and e["success"] for e in episodes) / max(1, len(episodes))}
    (cfg.out / "demos_report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Generate scripted demonstrations (LeRobot-style dataset + rosbag2).")
    p.add_argument("--suite", default="all", help="'all' or one of spatial, object, goal, long")
    p.add_argument("--episodes-per-task", type=int, default=10, help="successful episodes per task")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2))), help="parallel processes")
    p.add_argument("--model", default="ur3", choices=("ur3", "ur3e"), help="simulated robot")
    p.add_argument("--image-size", type=int, default=224, help="camera image size (pixels)")
    p.add_argument("--fps", type=float, default=10.0, help="policy / recording rate (Hz)")
    p.add_argument("--seed", type=int, default=0, help="layout seed")
    p.add_argument("--formats", default="lerobot,mcap,sqlite3", help="comma list of lerobot, mcap, sqlite3")
    p.add_argument("--bag-episodes-per-task", type=int, default=2, help="bags for the first N episodes per task (-1: all)")
    p.add_argument("--chunk", type=int, default=10, help="actions per /action_chunk message")
    p.add_argument("--tasks", default="", help="comma list of <suite>/<name> keys (default: the whole suite)")
    p.add_argument("--from-init-states", action="store_true", help="use the saved evaluation init states")
    p.add_argument("--no-compress", action="store_true", help="write uncompressed episode files (fast to read)")
    p.add_argument("--qd-max", type=float, default=None,
                   help="cap the expert's joint speed (rad/s; 0.9 keeps under the node's UR3 default of 1.0)")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="DART perturbation of the executed arm targets, rad (std of an AR(1) noise; labels stay clean)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = DemoConfig(out=a.out, suite=a.suite, episodes_per_task=a.episodes_per_task, workers=a.workers,
                     model=a.model, image_size=a.image_size, fps=a.fps, seed=a.seed,
                     formats=tuple(f for f in a.formats.split(",") if f), bag_episodes_per_task=a.bag_episodes_per_task,
                     chunk=a.chunk, from_init_states=a.from_init_states,
                     task_keys=tuple(k for k in a.tasks.split(",") if k), compress=not a.no_compress,
                     qd_max=a.qd_max, action_noise=a.action_noise)
    report = generate(cfg)
    log.info("done in %.0f s: %s", report["wall_s"], json.dumps(report["per_task"]))


if __name__ == "__main__":
    main()
