"""``actquant eval-libero``: closed-loop success of a policy GGUF on LIBERO (policy here, LIBERO in its own venv).

    actquant eval-libero --gguf policy.gguf --suite libero_spatial --episodes 50 [--tasks 0,3|NAME,...]
                         [--protocol auto|openpi|oft] [--libero-python .venv-libero/bin/python] [--workers 4]
                         [--device cpu|cuda] --out eval.json

The policy runs in this process through the native runtime (``load_runtime``: pi0.5 or OpenVLA-OFT, no
torch); LIBERO runs in the env server (``env_server.py``) started with the LIBERO venv's interpreter, over a
Unix domain socket (``wire``).  Episode ``i`` of a task starts from LIBERO's standard init state ``i``
(``--start-index`` shifts them), in task order, so runs are comparable across quantisations.  The protocol
(``protocols``) decides image mapping, replanning, wait steps, gripper convention and env seed; ``auto``
takes openpi's for pi0.5 and OpenVLA-OFT's for OFT.  Results: success per task, per suite and overall with
Wilson 95 % intervals (same JSON shape as ``actquant eval-sim``), policy latency percentiles, wall time;
``--out`` is rewritten after every episode, so a long run can be watched (``"complete": false`` until done).
``--workers N`` runs N env servers (one task each at a time) against the one policy, whose calls are
serialised: the simulation of one env overlaps the inference for another.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actquant_core.libero.client import EnvClient, EnvServerConfig, EnvServerError, default_libero_python
from actquant_core.libero.protocols import (
    DUMMY_ACTION,
    PROTOCOLS,
    SUITE_MAX_STEPS,
    LiberoProtocol,
    env_actions,
    get_protocol,
    max_steps,
    policy_slots,
    to_observation,
)
from actquant_core.sim.evaluate import wilson_interval

log = logging.getLogger(__name__)

PROTOCOL_CHOICES = ("auto", *PROTOCOLS)
#: policy family -> the protocol its public LIBERO checkpoints were evaluated with.
FAMILY_PROTOCOL = {"pi05": "openpi", "openvla_oft": "oft"}


@dataclass(frozen=True)
class LiberoEvalConfig:
    """LIBERO evaluation settings.

    Attributes:
        gguf: policy file.
        suite: libero_spatial | libero_object | libero_goal | libero_10 | libero_90.
        tasks: task indices or names within the suite (empty: all tasks).
        episodes: episodes per task (init states start_index .. start_index + episodes - 1).
        start_index: first init state.
        protocol: "auto" (by policy family), "openpi" or "oft".
        replan_steps: override the protocol's actions per policy call (None: the protocol's 5 / 8).
        max_steps: override the suite's step limit (None: 220 / 280 / 300 / 520 / 400); wait steps not counted.
        libero_python: interpreter of the LIBERO venv.
        workers: env servers run in parallel, each taking whole tasks (a task's episodes stay in order on one
            env, as upstream); the policy is shared and its calls serialised.  With workers > 1 the order of
            pi0.5's noise draws depends on timing, so runs are reproducible only with workers = 1.
        threads: native runtime threads.
        device: native runtime device: "cpu" | "cuda" | "cuda:N".
        seed: flow-matching noise seed of a pi0.5 runtime (openpi: 7).
        request_timeout_s: time allowed for one env server reply.
        server_log: env server log file (None: a temporary file, quoted on failure).
        out: JSON result path, rewritten after every episode ("complete": false until the end).
    """

    gguf: str
    suite: str = "libero_spatial"
    tasks: tuple[str, ...] = ()
    episodes: int = 50
    start_index: int = 0
    protocol: str = "auto"
    replan_steps: int | None = None
    max_steps: int | None = None
    libero_python: str = field(default_factory=default_libero_python)
    workers: int = 1
    threads: int = 1
    device: str = "cpu"
    seed: int = 7
    request_timeout_s: float = 900.0
    server_log: str | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        if self.suite not in SUITE_MAX_STEPS:
            raise ValueError(f"LiberoEvalConfig.suite must be one of {list(SUITE_MAX_STEPS)}, got {self.suite!r}")
        if self.protocol not in PROTOCOL_CHOICES:
            raise ValueError(f"LiberoEvalConfig.protocol must be one of {PROTOCOL_CHOICES}, got {self.protocol!r}")
        if self.episodes < 1 or self.start_index < 0 or self.threads < 1 or self.workers < 1:
            raise ValueError(f"LiberoEvalConfig: episodes, threads, workers >= 1 and start_index >= 0 required; got "
                             f"episodes={self.episodes}, threads={self.threads}, workers={self.workers}, "
                             f"start_index={self.start_index}")
        if self.workers > 1 and self.server_log is not None:
            raise ValueError(f"LiberoEvalConfig.server_log is one file; it cannot be shared by {self.workers} workers")
        for name in ("replan_steps", "max_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"LiberoEvalConfig.{name} must be >= 1 or None, got {v}")
        if not isinstance(self.tasks, tuple):
            raise ValueError(f"LiberoEvalConfig.tasks must be a tuple, got {type(self.tasks).__name__}")


@dataclass
class LiberoEpisode:
    """One episode's outcome (``steps``: env steps after the wait steps)."""

    task: str
    task_index: int
    init_index: int
    success: bool
    steps: int
    policy_calls: int
    wall_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)


def select_tasks(available: list[dict[str, Any]], wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    """The suite's task records for ``wanted`` (indices or names; empty: all), in the given order."""
    if not wanted:
        return list(available)
    by_name = {t["name"]: t for t in available}
    out = []
    for w in wanted:
        w = str(w).strip()
        if w.isdigit() and int(w) < len(available):
            out.append(available[int(w)])
        elif w in by_name:
            out.append(by_name[w])
        else:
            raise ValueError(f"no task {w!r} in this suite; give an index 0..{len(available) - 1} or one of "
                             f"{sorted(by_name)}")
    return out


def run_episode(env: EnvClient, runtime: Any, protocol: LiberoProtocol, suite: str, task: dict[str, Any],
                init_index: int, step_limit: int, slots: tuple[str, str]) -> LiberoEpisode:
    """One episode: reset to the init state, ``wait_steps`` dummy actions, then query / execute until the
    env reports done (success) or ``step_limit`` policy-driven steps ran."""
    t0 = time.perf_counter()
    res = LiberoEpisode(task=f"{suite}/{task['name']}", task_index=int(task["index"]), init_index=init_index,
                        success=False, steps=0, policy_calls=0)
    obs = env.reset(suite, int(task["index"]), init_index, protocol.env_seed, protocol.resolution)
    if protocol.wait_steps:
        obs = env.step(np.tile(np.asarray(DUMMY_ACTION), (protocol.wait_steps, 1)), stop_on_done=False)
    while res.steps < step_limit:
        o = to_observation(obs.arrays, task["language"], slots, protocol, stamp=time.time())
        chunk = runtime.infer(o)
        res.policy_calls += 1
        res.latency_ms.append(float(chunk.timing_ms.get("total", 0.0)))
        actions = env_actions(chunk.actions, protocol)[: step_limit - res.steps]
        if res.policy_calls == 1 and len(actions) < min(protocol.replan_steps, step_limit):
            log.warning("the policy's chunk has %d actions < replan_steps %d: executing all of each chunk",
                        len(chunk.actions), protocol.replan_steps)
        obs = env.step(actions)
        res.steps += obs.steps
        if obs.done:
            res.success = True
            break
    res.wall_s = time.perf_counter() - t0
    log.info("%s #%d: %s in %d steps (%d policy calls, %.0f s)", res.task, init_index,
             "success" if res.success else "failure", res.steps, res.policy_calls, res.wall_s)
    return res


def _rate(success: int, episodes: int) -> dict[str, Any]:
    return {"success": success, "episodes": episodes, "rate": success / episodes if episodes else 0.0,
            "wilson95": wilson_interval(success, episodes)}


def summarize(results: list[LiberoEpisode]) -> dict[str, Any]:
    """Per task, per suite and overall success with Wilson 95 % intervals; latency percentiles."""
    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r.task, []).append(r.success)
    per_suite: dict[str, list[bool]] = {}
    for k, v in per_task.items():
        per_suite.setdefault(k.split("/")[0], []).extend(v)
    lat = [x for r in results for x in r.latency_ms]
    return {
        "per_task": {k: _rate(sum(v), len(v)) for k, v in per_task.items()},
        "per_suite": {k: _rate(sum(v), len(v)) for k, v in per_suite.items()},
        "overall": _rate(sum(r.success for r in results), len(results)),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))} if lat else {},
    }


def open_runtime(gguf: str, threads: int, seed: int, device: str = "cpu") -> Any:
    """``load_runtime`` with the seed where the family takes one (pi0.5's flow-matching noise)."""
    from actquant_core import constants as C
    from actquant_core import native
    from actquant_core.runtime import load_runtime

    family = native.GgufModel(gguf).metadata(C.KEY_FAMILY)
    kw: dict[str, Any] = {"n_threads": threads, "device": device}
    if family == C.PI05_FAMILY:
        kw["seed"] = seed
    return load_runtime(gguf, **kw)


def resolve_protocol(cfg: LiberoEvalConfig, runtime: Any) -> LiberoProtocol:
    name = cfg.protocol
    if name == "auto":
        family = getattr(runtime, "family", None)
        if family not in FAMILY_PROTOCOL:
            raise ValueError(f"--protocol auto: no LIBERO protocol known for policy family {family!r}; "
                             f"pass --protocol {'|'.join(PROTOCOLS)}")
        name = FAMILY_PROTOCOL[family]
    return get_protocol(name, cfg.replan_steps)


class _LockedRuntime:
    """Serialises ``infer`` of one runtime shared by the worker threads (the native runtime is not re-entrant)."""

    def __init__(self, runtime: Any) -> None:
        self._rt, self._lock = runtime, threading.Lock()
        self.config, self.family = getattr(runtime, "config", None), getattr(runtime, "family", None)

    def infer(self, obs: Any) -> Any:
        with self._lock:
            return self._rt.infer(obs)


def evaluate(cfg: LiberoEvalConfig, runtime: Any = None, server: EnvServerConfig | None = None) -> dict[str, Any]:
    """Runs the episodes; returns the JSON-able result (also written to ``cfg.out`` after every episode).

    Args:
        cfg: settings.
        runtime: a PolicyRuntime (``infer(Observation) -> ActionChunk``, ``config`` with camera slots,
            ``family``); None opens ``cfg.gguf``.
        server: env server settings (None: ``cfg.libero_python``, ``cfg.request_timeout_s``, ``cfg.server_log``).
    """
    t0 = time.time()
    rt = runtime if runtime is not None else open_runtime(cfg.gguf, cfg.threads, cfg.seed, cfg.device)
    protocol = resolve_protocol(cfg, rt)
    slots = policy_slots(rt)
    limit = cfg.max_steps or max_steps(cfg.suite)
    server = server or EnvServerConfig(python=cfg.libero_python, request_timeout_s=cfg.request_timeout_s,
                                       log_path=cfg.server_log)
    results: list[LiberoEpisode] = []
    lock = threading.Lock()
    order: dict[int, int] = {}  # task index -> position in the requested task list
    head: dict[str, Any] = {"config": asdict(cfg), "protocol": asdict(protocol), "max_steps": limit}

    def report(final: bool) -> dict[str, Any]:
        with lock:
            done = sorted(results, key=lambda r: (order[r.task_index], r.init_index))
            res = {**head, **summarize(done), "complete": final, "wall_s": time.time() - t0,
                   "episodes": [asdict(r) | {"latency_ms": None} for r in done]}
        if cfg.out:
            out = Path(cfg.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            os.replace(tmp, out)
        return res

    def run_tasks(env: EnvClient, todo: queue.SimpleQueue, policy: Any) -> None:
        while True:
            try:
                task = todo.get_nowait()
            except queue.Empty:
                return
            for i in range(cfg.start_index, cfg.start_index + cfg.episodes):  # in order on one env (its seed stream)
                ep = run_episode(env, policy, protocol, cfg.suite, task, i, limit, slots)
                with lock:
                    results.append(ep)
                report(final=False)

    with EnvClient(server) as env:
        head["env_server"] = env.info
        log.info("LIBERO env server: %s", env.info)
        tasks = select_tasks(env.tasks(cfg.suite), cfg.tasks)
        order.update({int(t["index"]): k for k, t in enumerate(tasks)})
        for task in tasks:
            if cfg.start_index + cfg.episodes > task["n_init_states"]:
                raise ValueError(f"{cfg.suite}/{task['name']} has {task['n_init_states']} init states; "
                                 f"start_index {cfg.start_index} + episodes {cfg.episodes} exceeds them")
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for task in tasks:
            todo.put(task)
        n_workers = min(cfg.workers, len(tasks))
        if n_workers == 1:
            run_tasks(env, todo, rt)
        else:
            policy = _LockedRuntime(rt)
            errors: list[BaseException] = []

            def worker(own_env: EnvClient | None) -> None:
                try:
                    if own_env is not None:
                        run_tasks(own_env, todo, policy)
                        return
                    with EnvClient(server) as e:
                        run_tasks(e, todo, policy)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(exc)
                    while not todo.empty():  # stop the other workers after their current task
                        try:
                            todo.get_nowait()
                        except queue.Empty:
                            break

            threads = [threading.Thread(target=worker, args=(env if k == 0 else None,), name=f"libero-{k}")
                       for k in range(n_workers)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors:
                raise errors[0]
    return report(final=True)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``eval-libero`` to the ``actquant`` command line."""
    p = sub.add_parser("eval-libero", help="closed-loop success on LIBERO (env server in the LIBERO venv)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", required=True, help="policy GGUF (pi0.5 or OpenVLA-OFT)")
    p.add_argument("--suite", default="libero_spatial", choices=tuple(SUITE_MAX_STEPS))
    p.add_argument("--tasks", default="", help="comma list of task indices or names (default: all)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task (default 50, as openpi / OFT)")
    p.add_argument("--start-index", type=int, default=0, help="first init state (default 0)")
    p.add_argument("--protocol", default="auto", choices=PROTOCOL_CHOICES,
                   help="openpi (pi0.5) or oft; auto picks by the policy family")
    p.add_argument("--replan", type=int, default=None, help="actions per policy call (default: protocol's 5 / 8)")
    p.add_argument("--max-steps", type=int, default=None, help="step limit per episode (default: the suite's)")
    p.add_argument("--libero-python", default=None,
                   help="LIBERO venv interpreter (default $ACTQUANT_LIBERO_PYTHON or .venv-libero/bin/python)")
    p.add_argument("--workers", type=int, default=1,
                   help="env servers in parallel, one task each at a time (default 1; >1: not bit-reproducible)")
    p.add_argument("--threads", type=int, default=1, help="native runtime threads (default 1)")
    p.add_argument("--device", default="cpu", help="native runtime device: cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--seed", type=int, default=7, help="pi0.5 noise seed (default 7)")
    p.add_argument("--request-timeout", type=float, default=900.0, help="seconds per env server reply")
    p.add_argument("--server-log", default=None, help="env server log file (default: temporary)")
    p.add_argument("--out", default=None, help="JSON output path (rewritten after every episode)")
    p.set_defaults(func=_cli)


def _cli(a: argparse.Namespace) -> int:
    cfg = LiberoEvalConfig(gguf=a.gguf, suite=a.suite, tasks=tuple(t for t in a.tasks.split(",") if t.strip()),
                           episodes=a.episodes, start_index=a.start_index, protocol=a.protocol,
                           replan_steps=a.replan, max_steps=a.max_steps,
                           libero_python=a.libero_python or default_libero_python(), workers=a.workers,
                           threads=a.threads, device=a.device, seed=a.seed, request_timeout_s=a.request_timeout,
                           server_log=a.server_log, out=a.out)
    try:
        res = evaluate(cfg)
    except EnvServerError as e:
        log.error("%s", e)
        return 1
    for k, v in res["per_task"].items():
        lo, hi = v["wilson95"]
        print(f"{k:90s} {v['success']:3d}/{v['episodes']:<3d} {100 * v['rate']:5.1f}%  [{100 * lo:4.1f}, {100 * hi:4.1f}]")
    o = res["overall"]
    print(f"overall {o['success']}/{o['episodes']} = {100 * o['rate']:.1f}%  "
          f"latency p50 {res['latency_ms'].get('p50', 0):.0f} ms  wall {res['wall_s']:.0f} s")
    return 0
