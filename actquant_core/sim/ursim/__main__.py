"""Command line of the UR controller simulator (``actquant-ursim``).

    python -m actquant_core.sim.ursim --host 127.0.0.2 --model ur3e --backend kinematic \
        [--ready-file /tmp/ursim.ready] [--initial-q 0 -1.57 1.57 -1.57 -1.57 0] [--log-level INFO]

Prints one line starting with ``URSIM READY`` on stdout (and writes the same line to ``--ready-file``)
once all three ports serve; stops cleanly on SIGTERM / SIGINT (exit code 0).  Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from actquant_core import constants as C
from actquant_core.sim.ursim.config import BACKENDS, DEFAULT_INITIAL_Q, MODELS, UrSimConfig
from actquant_core.sim.ursim.server import UrSimServer

log = logging.getLogger("actquant_core.sim.ursim")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actquant-ursim", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback address to serve on (127.0.0.0/8)")
    p.add_argument("--model", choices=sorted(MODELS), default="ur3",
                   help="ur3 = CB3 controller (125 Hz, version 3.x); ur3e = e-series (500 Hz, 5.x)")
    p.add_argument("--backend", choices=BACKENDS, default="kinematic",
                   help="kinematic = numpy, perfect tracking; mujoco = the MuJoCo UR3 world")
    p.add_argument("--initial-q", type=float, nargs=6, default=list(DEFAULT_INITIAL_Q), metavar="Q",
                   help="initial joint positions (rad)")
    p.add_argument("--task", default=None, help="task for the MuJoCo world (mujoco backend only)")
    p.add_argument("--seed", type=int, default=0, help="seed for the MuJoCo world")
    p.add_argument("--init-index", type=int, default=-1,
                   help="start from this saved init state of --task (arm at home pose); -1: seeded layout")
    p.add_argument("--gripper-pin", type=int, default=0, help="standard digital output driving the gripper")
    p.add_argument("--pstop-unlock-delay", type=float, default=5.0,
                   help="seconds after a protective stop before it can be unlocked (real robot: 5)")
    p.add_argument("--rtde-port", type=int, default=C.RTDE_PORT)
    p.add_argument("--dashboard-port", type=int, default=C.RTDE_DASHBOARD_PORT)
    p.add_argument("--script-port", type=int, default=C.RTDE_SCRIPT_PORT)
    p.add_argument("--ready-file", type=Path, default=None, help="file written with the READY line once serving")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="shut down when the parent process dies (used by the test helper)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s ursim %(levelname)s %(name)s: %(message)s")
    try:
        cfg = UrSimConfig(
            host=args.host, model=args.model, backend=args.backend, initial_q=tuple(args.initial_q),
            task=args.task, seed=args.seed, init_index=args.init_index, gripper_pin=args.gripper_pin,
            pstop_unlock_delay_s=args.pstop_unlock_delay, rtde_port=args.rtde_port,
            dashboard_port=args.dashboard_port, script_port=args.script_port,
        )
    except ValueError as e:
        log.error("%s", e)
        return 2
    server = UrSimServer(cfg)
    try:
        server.start()
    except OSError as e:
        log.error("cannot serve on %s: %s", cfg.host, e)
        server.backend.close()
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ready = (f"{C.URSIM_READY_LINE} host={cfg.host} model={cfg.model} backend={cfg.backend} "
             f"rate_hz={cfg.ur.rate_hz:g} rtde={cfg.rtde_port} dashboard={cfg.dashboard_port} "
             f"script={cfg.script_port} pid={os.getpid()}")
    if args.ready_file is not None:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(ready + "\n")
        tmp.replace(args.ready_file)
    sys.stdout.write(ready + "\n")
    sys.stdout.flush()
    parent = os.getppid()
    while not stop.wait(0.5):
        if args.exit_with_parent and os.getppid() != parent:
            log.warning("parent process %d is gone: shutting down", parent)
            break
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
