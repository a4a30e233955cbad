"""`make demo` — the main job on the embedded default, end to end on one machine with no GPU and no ROS.

1. Policy: a bundled small policy (``--policy oft``, the default: OpenVLA-OFT,
   ``actquant_core/assets/policies/openvla-oft-small-sim``; ``--policy pi05``: π₀.₅, ``pi05-small-sim``),
   quantized with ActQuant to about ``--bpw`` bits per weight (calibrated on freshly generated simulator demonstrations), cached under
   ``.cache/demo/``; ``--gguf`` uses a given file instead.
2. For each episode: the UR controller simulator with its MuJoCo world and cameras on DDS
   (``actquant_ros.sim_camera_node``, RTDE on its own loopback address, the task's saved init state), and the
   ROS 2 policy node (``actquant_ros.policy_node``) talking to it through the real ``ur_rtde`` client
   (``arm:=rtde``, ``dry_run:=false``) and reading the cameras, joint states and instruction over DDS.
3. Success is read from the simulator (``actquant task_success`` on its dashboard port) until the task's step
   limit; the node's recording gives the inference latency.

Prints success rate, bpw, file size and latency, and writes ``demo.json``.

    python -m actquant_ros.demo [--episodes 4] [--tasks spatial/left_bowl,...] [--bpw 3.0] [--gguf FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from actquant_core import constants as C

log = logging.getLogger("actquant.demo")

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {  # --policy: (bundled trained folder, node params file, GGUF family, actions executed per chunk)
    "oft": (ROOT / "actquant_core" / "assets" / "policies" / "openvla-oft-small-sim", "policy_oft_small.yaml",
            C.OFT_FAMILY, 6),
    "pi05": (ROOT / "actquant_core" / "assets" / "policies" / "pi05-small-sim", "policy_pi05_small.yaml",
             C.PI05_FAMILY, 8),
}
CONFIG_DIR = ROOT / "config"
# The bundled policies learned from a speed-capped expert (joint targets <= 0.9 rad/s, `sim.demos --qd-max 0.9`), so
# the demo runs the node with its real-hardware safety defaults (config/ur3.yaml: qd_max 1 rad/s, qdd_max 5 rad/s^2,
# max_step_rad 0.03); --node-param overrides them.
DEMO_NODE_PARAMS: tuple[str, ...] = ()
DEFAULT_TASKS = ("goal/open_drawer", "spatial/left_bowl", "object/red_cube_bowl", "goal/cube_on_plate")


def _run(cmd: list[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {r.returncode}")


def policy_digest(folder: Path) -> str:
    """Short content hash of a policy folder's weights, config and norm stats (a retrained bundled policy must
    not reuse a GGUF cached from the previous one)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".json") and f.name != "train_log.json":
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def quantizer_digest(method: str) -> str:
    """Short hash of what ``actquant quantize`` does by default for ``method`` (stage 2, menu, score floor, noise
    model and its row sample): a cached GGUF made under other defaults is not reused."""
    import hashlib

    from actquant_core.quant.types import DEFAULT_SCORE_FLOOR, product_defaults

    d = product_defaults(method)
    key = f"{d['stage2']}|{','.join(d['menu'])}|{DEFAULT_SCORE_FLOOR}|{d['noise']}|{d['output_rows']}"
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def build_policy(cache: Path, bpw: float, method: str, threads: int, policy: str = "oft") -> Path:
    """ActQuant-quantized GGUF of a bundled policy (cached by policy content, quantizer defaults, bpw, method)."""
    folder = POLICIES[policy][0]
    out = cache / f"{folder.name}-{policy_digest(folder)}-q{quantizer_digest(method)}-{method}-{bpw:g}bpw.gguf"
    if out.exists():
        log.info("using cached %s", out)
        return out
    calib = cache / "calib"
    if not (calib / "lerobot" / "meta" / "info.json").exists():
        _run([sys.executable, "-m", "actquant_core.sim.demos", "--suite", "all", "--episodes-per-task", "1",
              "--out", str(calib), "--workers", "2", "--formats", "lerobot", "--seed", "1000"],
             "calibration demonstrations")
    _run([sys.executable, "-m", "actquant_core.cli", "quantize", "--checkpoint", str(folder),
          "--calib", str(calib / "lerobot"), "--calib-frames", "64", "--bpw", str(bpw), "--method", method,
          "-o", str(out), "--threads", str(threads), "--no-progress"], f"actquant quantize ({method}, {bpw} bpw)")
    return out


def _dashboard(host: str, line: str, timeout_s: float = 2.0) -> str:
    from actquant_core.sim.ursim.testing import dashboard_command

    return dashboard_command(host, line)


def _stop(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_episode(gguf: Path, task_key: str, init_index: int, host: str, work: Path, threads: int,
                model: str = C.UR_TYPE_UR3, policy: str = "oft", node_params: tuple[str, ...] = ()) -> dict:
    """One closed-loop episode through simulator ↔ ur_rtde ↔ policy node ↔ native runtime."""
    from actquant_core.runtime.recording import load_recording
    from actquant_core.sim.tasks import get_task
    from actquant_ros.transport.loopback import use_loopback_config

    task = get_task(task_key)
    node_overrides = [x for kv in node_params for x in ("-p", kv)]
    env = dict(os.environ)
    use_loopback_config(env)
    work.mkdir(parents=True, exist_ok=True)
    ready = work / "sim.ready"
    ready.unlink(missing_ok=True)
    rec = work / "calls.npz"
    rec.unlink(missing_ok=True)
    sim_cmd = [sys.executable, "-m", "actquant_ros.sim_camera_node", "--host", host, "--model", model,
               "--backend", "mujoco", "--task", task_key, "--init-index", str(init_index), "--ready-file",
               str(ready), "--exit-with-parent", "--ros-args", "-p", "camera_rate_hz:=10.0"]
    node_cmd = [sys.executable, "-m", "actquant_ros.policy_node", "--ros-args",
                "--params-file", str(CONFIG_DIR / f"{model}.yaml"),
                "--params-file", str(CONFIG_DIR / POLICIES[policy][1]),
                "-p", f"policy_gguf:={gguf}", "-p", f"ur_type:={model}", "-p", "dry_run:=false",
                "-p", "arm:=rtde", "-p", f"robot_ip:={host}", "-p", f"threads:={threads}",
                "-p", "gripper_output:=0", "-p", "gripper_open_is_high:=false", "-p", "rtde_watchdog_hz:=2.0",
                "-p", f"record_path:={rec}", "-p", f"instruction:={task.instruction}",  # before /instruction arrives
                # a 2-core machine runs simulator, renderer and policy together: ~0.3-0.5 s per chunk, so execute
                # most of each chunk (fewer boundary stalls) and allow slower joint data / chunk arrival
                "-p", f"execution_horizon:={POLICIES[policy][3]}", "-p", "joint_timeout_s:=0.2",
                "-p", "watchdog_timeout_s:=3.0", *node_overrides]
    sim = node = None
    t_start = time.monotonic()
    limit_s = task.max_steps / 10.0
    result = {"task": task_key, "init_index": init_index, "success": False}
    with open(work / "sim.log", "w") as sim_log, open(work / "node.log", "w") as node_log:
        try:
            sim = subprocess.Popen(sim_cmd, cwd=ROOT, env=env, stdout=sim_log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while not ready.exists():
                if sim.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"simulator did not start (see {work / 'sim.log'})")
                time.sleep(0.1)
            node = subprocess.Popen(node_cmd, cwd=ROOT, env=env, stdout=node_log, stderr=subprocess.STDOUT)
            # Wait for motion to start (node connected, first chunk executed), then run for the task's limit.
            q0 = np.array(json.loads(_dashboard(host, "actquant state"))["q"])
            t_move = None
            deadline = time.monotonic() + 90
            while t_move is None:
                if node.poll() is not None:
                    raise RuntimeError(f"policy node exited with {node.returncode} (see {work / 'node.log'})")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the arm never moved (see {work / 'node.log'})")
                q = np.array(json.loads(_dashboard(host, "actquant state"))["q"])
                if np.max(np.abs(q - q0)) > 1e-3:
                    t_move = time.monotonic()
                time.sleep(0.1)
            while time.monotonic() - t_move < limit_s:
                if _dashboard(host, "actquant task_success").endswith("true"):
                    result["success"] = True
                    break
                if node.poll() is not None:
                    raise RuntimeError(f"policy node exited with {node.returncode} (see {work / 'node.log'})")
                time.sleep(0.2)
            result["episode_s"] = time.monotonic() - t_move
        except Exception as e:  # report and go on with the next episode
            result["error"] = str(e)
            log.error("%s #%d: %s", task_key, init_index, e)
        finally:
            _stop(node)
            _stop(sim)
    if rec.exists():
        calls = load_recording(rec)
        lat = [c.latency_ms for c in calls if np.isfinite(c.latency_ms)]
        result["policy_calls"] = len(calls)
        result["latency_ms"] = lat
    result["wall_s"] = time.monotonic() - t_start
    log.info("%s #%d: %s (%d policy calls)", task_key, init_index, "success" if result["success"] else "failure",
             result.get("policy_calls", 0))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", choices=sorted(POLICIES), default="oft",
                    help="bundled small policy: oft (OpenVLA-OFT, default) or pi05")
    ap.add_argument("--episodes", type=int, default=4, help="episodes in total, spread over --tasks")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma list of <suite>/<name>")
    ap.add_argument("--bpw", type=float, default=3.0, help="ActQuant bits-per-weight budget (backbone)")
    ap.add_argument("--method", default="actquant", help="quantization method (actquant | rtn | imatrix | ...)")
    ap.add_argument("--gguf", type=Path, default=None, help="use this policy GGUF instead of quantizing")
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="native threads")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "demo")
    ap.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra policy-node parameter (repeatable), e.g. qd_max:=3.0")
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default: <cache>/demo.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gguf = args.gguf or build_policy(args.cache, args.bpw, args.method, args.threads, args.policy)
    from actquant_core.gguf import read_policy_gguf

    pf = read_policy_gguf(gguf, expect_family=POLICIES[args.policy][2])
    tasks = [t for t in args.tasks.split(",") if t]
    episodes = []
    for i in range(args.episodes):
        key = tasks[i % len(tasks)]
        episodes.append(run_episode(gguf, key, i // len(tasks), f"127.0.0.{60 + i % 100}",
                                    args.cache / "episodes" / f"{i:03d}", args.threads, policy=args.policy,
                                    node_params=DEMO_NODE_PARAMS + tuple(args.node_param)))
    ok = sum(e["success"] for e in episodes)
    lat = [x for e in episodes for x in e.get("latency_ms", [])]
    summary = {
        "gguf": str(gguf),
        "file_mb": gguf.stat().st_size / 1e6,
        "bpw_backbone": (pf.plan_summary or {}).get("bpw_backbone"),
        "bpw_whole": (pf.plan_summary or {}).get("bpw_whole"),
        "method": (pf.plan_summary or {}).get("method"),
        "success": ok,
        "episodes": len(episodes),
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if lat else None,
        "errors": [e["error"] for e in episodes if "error" in e],
        "per_episode": [{k: v for k, v in e.items() if k != "latency_ms"} for e in episodes],
        "wall_s": time.time() - t0,
    }
    out = args.out or args.cache / "demo.json"
    out.write_text(json.dumps(summary, indent=1))
    print()
    print(f"policy        {gguf.name}: {summary['file_mb']:.1f} MB, method {summary['method']}, "
          f"bpw backbone {summary['bpw_backbone']}, whole model {summary['bpw_whole']}")
    for e in episodes:
        print(f"  {e['task']:28s} init {e['init_index']:2d}: {'SUCCESS' if e['success'] else 'failure'}"
              f"{'  (' + e['error'] + ')' if 'error' in e else ''}")
    print(f"success       {ok}/{len(episodes)} episodes (simulated UR3 over RTDE, policy node over DDS)")
    if lat:
        print(f"latency       p50 {summary['latency_ms_p50']:.0f} ms, p95 {summary['latency_ms_p95']:.0f} ms per chunk "
              f"(native GGML, {args.threads} threads)")
    print(f"wall time     {summary['wall_s']:.0f} s; details in {out}")
    return 0 if not summary["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
