"""Closed-loop evaluation of a policy GGUF on the simulated task suite (native runtime, no torch).

    actquant eval-sim --gguf policy.gguf --suite all --episodes 10 [--workers 2] [--replan 5] [--out eval.json]

Each episode starts from one of the task's saved init states (indices 0..episodes-1, so every method sees the
same starts), the policy is queried every ``replan`` steps and its chunk's first ``replan`` actions are executed
(openpi's LIBERO protocol: replan 5). Success per task and suite with Wilson 95 % intervals; JSON out; optional
episode videos (mp4 via OpenCV when installed, else PNG strips).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95 % by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass(frozen=True)
class EvalConfig:
    """Closed-loop evaluation settings.

    Attributes:
        gguf: policy file.
        suite: "all" or a suite name; tasks: explicit "<suite>/<name>" keys (override suite).
        episodes: episodes per task (init states 0..episodes-1).
        replan: actions executed per policy call.
        workers: parallel processes (each loads the policy once).
        threads: native threads per worker.
        model: "ur3" | "ur3e".
        seed: noise seed of the runtime.
        video_dir: write episode videos here (None: no videos).
    """

    gguf: str
    suite: str = "all"
    tasks: tuple[str, ...] = ()
    episodes: int = 10
    replan: int = 5
    workers: int = 1
    threads: int = 1
    model: str = "ur3"
    seed: int = 7
    video_dir: str | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.replan < 1 or self.workers < 1 or self.threads < 1:
            raise ValueError(f"EvalConfig: episodes, replan, workers and threads must be >= 1, got {self}")


@dataclass
class EpisodeResult:
    task: str
    init_index: int
    success: bool
    steps: int
    policy_calls: int
    latency_ms: list[float] = field(default_factory=list)


def _run_jobs(args: tuple[EvalConfig, list[tuple[str, int]]]) -> list[EpisodeResult]:
    cfg, jobs = args
    import actquant_core.sim  # noqa: F401  (sets MUJOCO_GL before mujoco)
    from actquant_core.runtime import load_runtime
    from actquant_core.runtime.types import Observation
    from actquant_core.sim.env import SimEnv, SimEnvConfig
    from actquant_core.sim.tasks import get_task

    rt = load_runtime(cfg.gguf, n_threads=cfg.threads, seed=cfg.seed)
    out = []
    envs: dict[str, SimEnv] = {}
    for key, idx in jobs:
        env = envs.get(key)
        if env is None:
            env = envs[key] = SimEnv(get_task(key), SimEnvConfig(model=cfg.model))
        obs = env.reset(init_index=idx)
        rt.reseed(episode_seed(cfg.seed, key, idx))  # results independent of how episodes are split over workers
        frames = []
        res = EpisodeResult(task=key, init_index=idx, success=False, steps=0, policy_calls=0)
        done = False
        while not done:
            chunk = rt.infer(Observation(images=sim_images_to_slots(obs["images"], rt.config),
                                         state=obs["state"], instruction=obs["instruction"]))
            res.policy_calls += 1
            res.latency_ms.append(chunk.timing_ms.get("total", 0.0))
            for a in chunk.actions[: cfg.replan]:
                if cfg.video_dir:
                    frames.append(np.concatenate(list(obs["images"].values()), axis=1))
                obs, ok, done = env.step(np.asarray(a[:7], np.float64))
                res.steps += 1
                if ok:
                    res.success = True
                if done:
                    break
        if cfg.video_dir and frames:
            _write_video(Path(cfg.video_dir) / f"{key.replace('/', '__')}_{idx:03d}.mp4", frames)
        log.info("%s #%d: %s in %d steps", key, idx, "success" if res.success else "failure", res.steps)
        out.append(res)
    for env in envs.values():
        env.close()
    return out


def episode_seed(seed: int, task: str, init_index: int) -> np.random.SeedSequence:
    """The policy's noise seed for one episode: a function of (run seed, task, init state) only, so an episode
    draws the same noise whichever worker runs it and whatever ran before it there."""
    import zlib

    return np.random.SeedSequence([seed, zlib.crc32(task.encode()), init_index])


def sim_images_to_slots(images: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """Sim camera frames -> the policy's image slots (:func:`~actquant_core.policies.common.image.sim_camera_map`:
    pi05 slots carry the sim cameras' names; OpenVLA-OFT's slots take third person, then wrist)."""
    from actquant_core.policies.common.image import sim_camera_map

    slots = tuple(config.camera_slots)  # OftConfig exposes its image_slots under this name too
    cams = sim_camera_map(slots)
    missing = [c for c in cams if c not in images]
    if missing:
        raise ValueError(f"the simulator renders {list(images)}; the policy's slots {list(slots)} need {missing}")
    return {slot: images[cam] for cam, slot in cams.items()}


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import cv2

        h, w = frames[0].shape[:2]
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
        for f in frames:
            vw.write(f[:, :, ::-1])
        vw.release()
    except ImportError:
        np.savez_compressed(path.with_suffix(".npz"), frames=np.stack(frames))


def evaluate(cfg: EvalConfig) -> dict:
    """Runs the suite; returns the JSON-able result (per task, per suite, overall, with Wilson intervals)."""
    from actquant_core.sim.tasks import suite_tasks

    keys = list(cfg.tasks) if cfg.tasks else [t.key for t in suite_tasks(cfg.suite)]
    jobs = [(k, i) for k in keys for i in range(cfg.episodes)]
    t0 = time.time()
    if cfg.workers == 1:
        results = _run_jobs((cfg, jobs))
    else:
        parts = [jobs[i :: cfg.workers] for i in range(cfg.workers)]
        ctx = mp.get_context("spawn")
        with ctx.Pool(cfg.workers) as pool:
            results = [r for part in pool.map(_run_jobs, [(cfg, p) for p in parts if p]) for r in part]
    per_task: dict[str, dict] = {}
    for k in keys:
        rs = [r for r in results if r.task == k]
        s = sum(r.success for r in rs)
        per_task[k] = {"success": s, "episodes": len(rs), "rate": s / len(rs), "wilson95": wilson_interval(s, len(rs))}
    per_suite: dict[str, dict] = {}
    for k, v in per_task.items():
        su = per_suite.setdefault(k.split("/")[0], {"success": 0, "episodes": 0})
        su["success"] += v["success"]
        su["episodes"] += v["episodes"]
    for v in per_suite.values():
        v["rate"] = v["success"] / v["episodes"]
        v["wilson95"] = wilson_interval(v["success"], v["episodes"])
    total_s = sum(v["success"] for v in per_task.values())
    total_n = sum(v["episodes"] for v in per_task.values())
    lat = [x for r in results for x in r.latency_ms]
    return {
        "config": asdict(cfg),
        "per_task": per_task,
        "per_suite": per_suite,
        "overall": {"success": total_s, "episodes": total_n, "rate": total_s / total_n,
                    "wilson95": wilson_interval(total_s, total_n)},
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))} if lat else {},
        "wall_s": time.time() - t0,
        "episodes": [asdict(r) | {"latency_ms": None} for r in results],
    }


def add_parser(sub) -> None:
    p = sub.add_parser("eval-sim", help="closed-loop success on the simulated UR3 suite (native runtime)")
    p.add_argument("--gguf", required=True)
    p.add_argument("--suite", default="all")
    p.add_argument("--tasks", default="", help="comma list of <suite>/<name> (overrides --suite)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--replan", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="native threads per worker (1 avoids barrier stalls when workers share cores)")
    p.add_argument("--model", default="ur3", choices=("ur3", "ur3e"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--video-dir", default=None)
    p.add_argument("--out", default=None, help="JSON output path")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    cfg = EvalConfig(gguf=a.gguf, suite=a.suite, tasks=tuple(k for k in a.tasks.split(",") if k),
                     episodes=a.episodes, replan=a.replan, workers=a.workers, threads=a.threads, model=a.model,
                     seed=a.seed, video_dir=a.video_dir)
    res = evaluate(cfg)
    for k, v in res["per_task"].items():
        lo, hi = v["wilson95"]
        print(f"{k:32s} {v['success']:3d}/{v['episodes']:<3d} {100 * v['rate']:5.1f}%  [{100 * lo:4.1f}, {100 * hi:4.1f}]")
    for k, v in res["per_suite"].items():
        print(f"suite {k:26s} {100 * v['rate']:5.1f}%")
    o = res["overall"]
    print(f"overall {o['success']}/{o['episodes']} = {100 * o['rate']:.1f}%  latency p50 {res['latency_ms'].get('p50', 0):.0f} ms")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0
register = add_parser
