"""Control-loop benchmark: servo period jitter and chunk-boundary stalls.

    python bench/control_loop.py [--jitter-seconds 5] [--stall-seconds 4] [--no-ursim] [--out PATH]

Measures, and writes to ``bench/results/control_loop.json``:

1. ``jitter``: servo period p50 / p99 / max and |period - nominal| (jitter) at 125 Hz and 500 Hz with
   ``DryRunArm`` on the real monotonic clock (sleep-until + final spin), while a synthetic runtime
   thread feeds chunks; also with the spin disabled (plain ``time.sleep``) for comparison.
2. ``stalls_realtime``: chunk-boundary stalls with a synthetic runtime that *sleeps* for the policy
   latency (50..300 ms) and requests the next chunk when ``needs_new_chunk()`` says so (target: 0).
   Also the image-to-command latency (observation time -> first servo command from that chunk).
3. ``stalls_simulated``: the same protocol on a simulated clock (deterministic, 60 s per case,
   including uniformly random latency 50-300 ms), for both rates.
4. ``ursim`` (when the UR controller simulator is importable): jitter with ``RtdeArm`` against the
   simulator (ur3 125 Hz, ur3e 500 Hz) through the real ur_rtde client.

The numbers depend on the machine's load; the JSON records the CPU count and the settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actquant_core import constants as C  # noqa: E402
from actquant_core.robot.clock import MonotonicClock, SimulatedClock  # noqa: E402
from actquant_core.robot.control_loop import ControlLoop, ControlLoopConfig  # noqa: E402
from actquant_core.robot.dry_run import DryRunArm, DryRunConfig  # noqa: E402
from actquant_core.robot.safety import Safety, SafetyConfig  # noqa: E402
from actquant_core.robot.scheduler import ChunkScheduler, SchedulerConfig  # noqa: E402
from actquant_core.runtime.types import ActionChunk  # noqa: E402

log = logging.getLogger("bench.control_loop")

LATENCIES_S = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
HORIZON = 10  # actions per chunk (10 Hz policy -> 1 s)
EXEC_HORIZON = 5  # actions executed per chunk (openpi "replan 5")
Q_HOME = np.array([0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0])


def reference(t: float, q_home: np.ndarray) -> np.ndarray:
    """Smooth target trajectory [6] (peak speed ~0.15 rad/s) around ``q_home``."""
    w = np.array([0.7, 0.5, 0.6, 0.8, 0.9, 1.0])
    return q_home + 0.2 * np.sin(w * t)


class SyntheticRuntime(threading.Thread):
    """Inference stand-in: when the loop asks, 'observes', sleeps for the latency, submits a chunk."""

    def __init__(self, loop: ControlLoop, latency_fn, q_home: np.ndarray, t0: float) -> None:
        super().__init__(name="synthetic-runtime", daemon=True)
        self.loop, self.latency_fn, self.q_home, self.t0 = loop, latency_fn, q_home, t0
        self.stop_evt = threading.Event()
        self.calls = 0

    def run(self) -> None:
        dt_p = self.loop.scheduler.config.dt_p
        while not self.stop_evt.is_set():
            if not self.loop.needs_new_chunk():
                time.sleep(0.001)
                continue
            self.loop.mark_chunk_requested()
            t_obs = time.monotonic()
            time.sleep(self.latency_fn())  # "inference"
            acts = np.stack([reference(t_obs - self.t0 + k * dt_p, self.q_home) for k in range(HORIZON)])
            acts = np.concatenate([acts, np.ones((HORIZON, 1))], axis=1)
            self.calls += 1
            if not self.loop.submit_chunk(ActionChunk(actions=acts, stamp=t_obs)):
                log.warning("chunk rejected (loop fault: %s)", self.loop.fault)


def run_dry(rate_hz: float, seconds: float, latency_fn, spin_s: float = 0.0005) -> dict:
    clock = MonotonicClock(spin_s=spin_s)
    arm = DryRunArm(DryRunConfig(control_rate_hz=rate_hz, initial_q=tuple(reference(0.0, Q_HOME))), clock=clock)
    arm.connect()
    sched = ChunkScheduler(SchedulerConfig(policy_rate_hz=10, execution_horizon=EXEC_HORIZON, mode="rtc",
                                           blend_window_s=0.05))
    safety = Safety(SafetyConfig(camera_timeout_s=None, watchdog_timeout_s=1.0))
    loop = ControlLoop(arm, sched, safety, ControlLoopConfig(), clock=clock)
    rt = SyntheticRuntime(loop, latency_fn, Q_HOME, time.monotonic())
    loop.start()
    rt.start()
    time.sleep(seconds)
    rt.stop_evt.set()
    loop.stop()
    rt.join(1.0)
    arm.disconnect()
    rep = loop.report().to_dict()
    rep["policy_calls"] = rt.calls
    return rep


def summarize(rep: dict) -> dict:
    keys = ("rate_hz", "ticks", "commands_sent", "stall_ticks", "stall_episodes", "late_ticks", "overruns",
            "period_ms", "jitter_ms", "tick_compute_ms", "obs_to_command_ms")
    out = {k: rep[k] for k in keys}
    out["faults"] = [f["reason"] for f in rep["faults"]]
    out["chunks_received"] = rep["scheduler"]["chunks_received"]
    out["latency_estimate_s"] = rep["scheduler"]["latency_estimate_s"]
    return out


def simulate_stalls(rate_hz: float, seconds: float, latency_fn) -> dict:
    """Deterministic: simulated clock, latency in simulated time."""
    clock = SimulatedClock(0.0)
    arm = DryRunArm(DryRunConfig(control_rate_hz=rate_hz, initial_q=tuple(reference(0.0, Q_HOME))), clock=clock)
    arm.connect()
    sched = ChunkScheduler(SchedulerConfig(policy_rate_hz=10, execution_horizon=EXEC_HORIZON, mode="rtc",
                                           blend_window_s=0.05))
    loop = ControlLoop(arm, sched, Safety(SafetyConfig(camera_timeout_s=None)), clock=clock)
    pending = None
    dt_p = sched.config.dt_p
    max_err = 0.0
    for _ in range(int(seconds * rate_hz)):
        t = clock.now()
        if pending is not None and pending[0] <= t + 1e-12:
            acts = np.stack([reference(pending[1] + k * dt_p, Q_HOME) for k in range(HORIZON)])
            loop.submit_chunk(ActionChunk(actions=acts, stamp=pending[1]))
            pending = None
        if pending is None and loop.needs_new_chunk():
            loop.mark_chunk_requested()
            pending = (t + latency_fn(), t)
        res = loop.step()
        if res.sent is not None and t > 2.0:
            max_err = max(max_err, float(np.max(np.abs(res.sent.q - reference(t, Q_HOME)))))
        clock.advance(loop.period)
    rep = loop.report()
    return {"rate_hz": rate_hz, "seconds": seconds, "stall_ticks": rep.stall_ticks,
            "stall_episodes": rep.stall_episodes, "late_ticks": rep.late_ticks,
            "chunks": rep.scheduler["chunks_received"], "faults": [f["reason"] for f in rep.faults],
            "max_tracking_error_rad": max_err}


def run_ursim(model: str, seconds: float) -> dict:
    from actquant_core.robot.rtde_arm import RtdeArm, RtdeArmConfig
    from actquant_core.sim.ursim.testing import client_deadline, ursim_process

    with ursim_process(model=model) as sim:
        arm = RtdeArm(RtdeArmConfig(robot_ip=sim.host, ur_type=model))
        with client_deadline(30.0, "RtdeArm.connect"):
            arm.connect()
        try:
            q_home = arm.observe().q
            sched = ChunkScheduler(SchedulerConfig(policy_rate_hz=10, execution_horizon=EXEC_HORIZON, mode="rtc",
                                                   blend_window_s=0.05))
            loop = ControlLoop(arm, sched, Safety(SafetyConfig(camera_timeout_s=None)), ControlLoopConfig())
            t0 = time.monotonic()
            # start the reference at q_home: reference(t) - reference(0) + q_home
            rt = SyntheticRuntime(loop, lambda: 0.1, q_home - (reference(0.0, Q_HOME) - Q_HOME), t0)
            loop.start()
            rt.start()
            time.sleep(seconds)
            rt.stop_evt.set()
            loop.stop()
            rt.join(1.0)
            rep = summarize(loop.report().to_dict())
            rep["controller_stats"] = sim.stats()
        finally:
            with client_deadline(30.0, "RtdeArm.disconnect"):
                arm.disconnect()
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jitter-seconds", type=float, default=5.0, help="duration of each jitter run (s)")
    ap.add_argument("--stall-seconds", type=float, default=4.0, help="duration of each real-time stall run (s)")
    ap.add_argument("--sim-seconds", type=float, default=60.0, help="simulated duration of each stall case (s)")
    ap.add_argument("--no-ursim", action="store_true", help="skip the runs against the UR controller simulator")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "control_loop.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    results: dict = {
        "meta": {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "load_avg_1m": os.getloadavg()[0], "policy_rate_hz": 10, "chunk_horizon": HORIZON,
                 "execution_horizon": EXEC_HORIZON, "mode": "rtc", "blend_window_s": 0.05,
                 "jitter_seconds": args.jitter_seconds, "stall_seconds": args.stall_seconds},
        "jitter": {}, "stalls_realtime": {}, "stalls_simulated": {}, "ursim": {},
    }
    for rate in (125.0, 500.0):
        for spin in (0.0005, 0.0):
            key = f"{int(rate)}hz_dryrun" + ("" if spin else "_nospin")
            rep = summarize(run_dry(rate, args.jitter_seconds, lambda: 0.1, spin_s=spin))
            results["jitter"][key] = rep
            print(f"jitter {key:>20}: period p50 {rep['period_ms']['p50']:.3f} ms, jitter p50 "
                  f"{rep['jitter_ms']['p50']:.3f} p99 {rep['jitter_ms']['p99']:.3f} "
                  f"max {rep['jitter_ms']['max']:.3f} ms,"
                  f" overruns {rep['overruns']}, stalls {rep['stall_ticks']}")
    for lat in LATENCIES_S:
        rep = summarize(run_dry(125.0, args.stall_seconds, lambda lat=lat: lat))
        results["stalls_realtime"][f"{int(lat * 1000)}ms"] = rep
        print(f"stalls real-time latency {int(lat * 1000):3d} ms @125 Hz: stall ticks {rep['stall_ticks']}, "
              f"late ticks {rep['late_ticks']}, chunks {rep['chunks_received']}, image-to-command p50 "
              f"{rep['obs_to_command_ms']['p50']:.1f} ms, faults {rep['faults']}")
    rng = np.random.default_rng(0)
    for rate in (125.0, 500.0):
        for name, fn in [(f"{int(lat * 1000)}ms", (lambda lat=lat: lat)) for lat in LATENCIES_S] + [
                ("uniform_50_300ms", lambda: float(rng.uniform(0.05, 0.3)))]:
            rep = simulate_stalls(rate, args.sim_seconds, fn)
            results["stalls_simulated"][f"{int(rate)}hz_{name}"] = rep
            print(f"stalls simulated {int(rate)} Hz {name:>16}: stall ticks {rep['stall_ticks']}, late ticks "
                  f"{rep['late_ticks']}, chunks {rep['chunks']}, "
                  f"max tracking error {rep['max_tracking_error_rad']:.2e} rad")
    if not args.no_ursim and importlib.util.find_spec("actquant_core.sim.ursim.testing") is not None:
        for model in (C.UR_TYPE_UR3, C.UR_TYPE_UR3E):
            try:
                rep = run_ursim(model, args.jitter_seconds)
            except Exception as exc:  # report and keep the other results
                log.exception("ursim run for %s failed", model)
                rep = {"error": repr(exc)}
            results["ursim"][model] = rep
            if "error" not in rep:
                print(f"jitter ursim {model:>5} @{int(rep['rate_hz'])} Hz: jitter p50 {rep['jitter_ms']['p50']:.3f} "
                      f"p99 {rep['jitter_ms']['p99']:.3f} max {rep['jitter_ms']['max']:.3f} ms, tick compute p99 "
                      f"{rep['tick_compute_ms']['p99']:.3f} ms, stalls {rep['stall_ticks']}, faults {rep['faults']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
