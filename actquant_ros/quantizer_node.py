"""The quantizer node (offline): runs the ``actquant quantize`` pipeline from ROS parameters, reports progress.

It calls ``actquant_core.quant.pipeline.quantize_policy`` (imported lazily: torch is loaded only here,
never by the online nodes) in a worker thread and publishes std_msgs/String JSON lines on ``~/progress``
(``/quantizer_node/progress``)::

    {"event": "started", "config": {...}}
    {"event": "log", "level": "INFO", "logger": "actquant_core.quant.pipeline", "message": "..."}   (pipeline log records)
    {"event": "done", "summary": {method, bpw_backbone, bpw_whole, file_size, gguf, plan, report, seconds}}
    {"event": "failed", "error": "..."}

Run::

    python -m actquant_ros.quantizer_node --ros-args -p checkpoint:=actquant_core/assets/policies/pi05-small-sim \
        -p calib:=demos/ -p bpw:=3.0 -p method:=actquant -p out:=pi05-small-3bpw.gguf
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from actquant_core import constants as C
from actquant_core.quant.types import DEFAULT_OUTPUT_ROWS, DEFAULT_SCORE_FLOOR, STAGE2_MODES, product_defaults
from actquant_ros.msgs import String
from actquant_ros.transport import QOS_DEFAULT, Node, make_node

__all__ = ["QuantizerConfig", "QuantizerNode", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizerConfig:
    """Parameters of ``quantizer_node`` (the ``actquant quantize`` options).

    Attributes:
        checkpoint: policy checkpoint folder / file, or "random:<preset>[:seed]".
        calib: calibration source (LeRobot-style dataset, demos folder, rosbag2 folder or folder of bags).
        out: output GGUF path (the plan and report are written beside it).
        bpw: average bits per weight of the allocated tensors, > 0.
        method: one of ``QUANT_METHODS``.
        scope: "backbone" or "all".
        plan: a plan YAML to re-apply ("" = allocate a new plan).
        tokenizer: SentencePiece model for lerobot / openpi checkpoints ("" = the checkpoint's own).
        calib_frames: frames sampled for calibration, >= 1.
        seed: sampling / noise seed, >= 0.
        threads: GGML quantization threads (0 = all CPUs).
        device: torch device of the calibration passes ("cpu", "cuda", "cuda:N").
        refine: refine K-quant blocks against the Fisher-weighted error.
        score_floor: HSIC scores raised to at least this fraction of their positive mean (as ``actquant
            quantize --score-floor``; default 0.5).
        stage2: "fisher", "plain", "best" or "" = the CLI's default (``default_stage2``: best for actquant).
            The allocator's noise model follows the CLI's default too (``default_noise``: "output" priced on
            ``DEFAULT_OUTPUT_ROWS`` sampled rows for actquant with stage 2 best).
        report: write the Markdown + PNG report.
        exit_when_done: shut the node down after the run (launch files end with it).
    """

    checkpoint: str = ""
    calib: str = ""
    out: str = ""
    bpw: float = 3.0
    method: str = "actquant"
    scope: str = "backbone"
    plan: str = ""
    tokenizer: str = ""
    calib_frames: int = 256
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    refine: bool = False
    score_floor: float = DEFAULT_SCORE_FLOOR
    stage2: str = ""
    report: bool = True
    exit_when_done: bool = True

    def __post_init__(self) -> None:
        for f in ("checkpoint", "calib", "out"):
            if not getattr(self, f):
                raise ValueError(f"QuantizerConfig.{f} is required, got {getattr(self, f)!r}")
        if not self.out.endswith(".gguf"):
            raise ValueError(f"QuantizerConfig.out={self.out!r} must end with .gguf")
        if not (isinstance(self.bpw, (int, float)) and 0 < self.bpw <= 32):
            raise ValueError(f"QuantizerConfig.bpw={self.bpw!r} must be in (0, 32]")
        if self.method not in C.QUANT_METHODS:
            raise ValueError(f"QuantizerConfig.method={self.method!r} must be one of {C.QUANT_METHODS}")
        if self.scope not in C.QUANT_SCOPES:
            raise ValueError(f"QuantizerConfig.scope={self.scope!r} must be one of {C.QUANT_SCOPES}")
        if self.calib_frames < 1:
            raise ValueError(f"QuantizerConfig.calib_frames={self.calib_frames!r} must be >= 1")
        if self.seed < 0 or self.threads < 0:
            raise ValueError(f"QuantizerConfig: seed={self.seed!r} and threads={self.threads!r} must be >= 0")
        if not (self.device in ("cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"QuantizerConfig.device={self.device!r} must be cpu, cuda or cuda:N")
        if not (math.isfinite(self.score_floor) and self.score_floor >= 0):
            raise ValueError(f"QuantizerConfig.score_floor={self.score_floor!r} must be finite and >= 0")
        if self.stage2 not in ("", *STAGE2_MODES):
            raise ValueError(f"QuantizerConfig.stage2={self.stage2!r} must be '' or one of {STAGE2_MODES}")

    @classmethod
    def from_node(cls, node: Node) -> QuantizerConfig:
        d = cls.__dataclass_fields__
        desc = {
            "checkpoint": "policy checkpoint folder / file, or random:<preset>[:seed] (required)",
            "calib": "calibration source: dataset, demos folder, rosbag2 folder or folder of bags (required)",
            "out": "output GGUF path; plan and report are written beside it (required)",
            "bpw": "average bits per weight of the allocated tensors",
            "method": f"quantization method: one of {', '.join(C.QUANT_METHODS)}",
            "scope": "allocated tensors: backbone (LM linear layers) | all",
            "plan": "plan YAML to re-apply ('' = allocate a new plan)",
            "tokenizer": "SentencePiece model for lerobot/openpi checkpoints ('' = the checkpoint's own)",
            "calib_frames": "calibration frames sampled (seeded reservoir)",
            "seed": "frame sampling / noise seed",
            "threads": "GGML quantization threads (0 = all CPUs)",
            "device": "torch device of the calibration passes: cpu | cuda | cuda:N",
            "refine": "refine K-quant blocks against the Fisher-weighted error",
            "score_floor": "HSIC scores raised to at least this fraction of their positive mean (0 = paper)",
            "stage2": "stage 2 quantizer: fisher | plain | best ('' = best for actquant, as actquant quantize; with best the "
                      f"allocator prices types by stage 2's output error on {DEFAULT_OUTPUT_ROWS} sampled rows, as the CLI)",
            "report": "write the Markdown + PNG report",
            "exit_when_done": "shut the node down when the run ends",
        }
        values = {name: node.declare_parameter(name, d[name].default, desc[name]) for name in desc}
        return cls(**values)


class QuantizerNode:
    """Runs one quantization in a worker thread and publishes its progress.

    Args:
        node: transport node.
        cfg: parameters.
        quantize_fn: the pipeline entry (default ``actquant_core.quant.pipeline.quantize_policy``, imported
            when the run starts); called as ``quantize_fn(checkpoint, calib, bpw, method, out_path, plan,
            config=PipelineConfig, tokenizer=...)`` and returning an object with ``summary()``.
    """

    def __init__(self, node: Node, cfg: QuantizerConfig, quantize_fn: Callable[..., Any] | None = None) -> None:
        self.node, self.cfg = node, cfg
        self._fn = quantize_fn
        self._pub = node.create_publisher(String, C.TOPIC_QUANT_PROGRESS, QOS_DEFAULT)
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, event: dict) -> None:
        if not self.node.is_shutdown:
            self._pub.publish(String(data=json.dumps(event, default=str)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="quantize", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float = 30.0) -> None:
        """Waits for the worker (it shuts the node down itself): the process must not exit while that thread is
        still inside native code (DDS shutdown, torch), which aborts the interpreter."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _pipeline_call(self) -> Any:
        cfg = self.cfg
        if self._fn is not None:
            return self._fn(cfg.checkpoint, cfg.calib, cfg.bpw, cfg.method, cfg.out, cfg.plan or None,
                            config=None, tokenizer=cfg.tokenizer or None)
        from actquant_core.quant.calibrate import CalibConfig
        from actquant_core.quant.gptq import GptqConfig
        from actquant_core.quant.pipeline import PipelineConfig, quantize_policy

        pc = PipelineConfig(method=cfg.method, bpw=cfg.bpw, scope=cfg.scope, refine=cfg.refine,
                            score_floor=cfg.score_floor, **product_defaults(cfg.method, stage2=cfg.stage2),
                            gptq=GptqConfig(device=cfg.device if cfg.device.startswith("cuda") else "cpu"),
                            calib_frames=cfg.calib_frames, seed=cfg.seed, n_threads=cfg.threads or None,
                            report=cfg.report, calib=CalibConfig(device=cfg.device))
        return quantize_policy(cfg.checkpoint, cfg.calib, cfg.bpw, cfg.method, cfg.out, cfg.plan or None,
                               config=pc, tokenizer=cfg.tokenizer or None)

    def _run(self) -> None:
        handler = _ProgressHandler(self.publish)
        quant_log = logging.getLogger("actquant_core.quant")
        quant_log.addHandler(handler)
        old_level = quant_log.level
        if quant_log.getEffectiveLevel() > logging.INFO:
            quant_log.setLevel(logging.INFO)  # progress needs the pipeline's INFO records
        t0 = time.perf_counter()
        try:
            self.publish({"event": "started", "config": asdict(self.cfg)})
            self.result = self._pipeline_call()
            summary = self.result.summary() if hasattr(self.result, "summary") else {}
            self.publish({"event": "done", "seconds": time.perf_counter() - t0, "summary": summary})
            self.node.get_logger().info("quantized %s -> %s: %s", self.cfg.checkpoint, self.cfg.out, summary)
        except Exception as exc:  # noqa: BLE001 (reported on the topic and in the exit status)
            self.error = exc
            self.node.get_logger().error("quantization failed: %r", exc)
            self.publish({"event": "failed", "error": repr(exc)})
        finally:
            quant_log.removeHandler(handler)
            quant_log.setLevel(old_level)
            self.done.set()
            if self.cfg.exit_when_done:
                time.sleep(0.2)  # let the last progress message go out
                self.node.shutdown()


class _ProgressHandler(logging.Handler):
    def __init__(self, emit_fn: Callable[[dict], None]) -> None:
        super().__init__(level=logging.INFO)
        self._emit = emit_fn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit({"event": "log", "level": record.levelname, "logger": record.name, "message": record.getMessage()})
        except Exception:  # noqa: BLE001 (progress must never break the run)
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: exit 0 after a successful run, 1 if it failed, 2 for bad parameters."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = make_node(C.QUANTIZER_NODE_NAME, argv=list(sys.argv[1:] if argv is None else argv))
    try:
        try:
            cfg = QuantizerConfig.from_node(node)
        except ValueError as exc:
            node.get_logger().error("bad parameters: %s", exc)
            return 2
        qn = QuantizerNode(node, cfg)
        qn.start()
        node.spin()
        qn.join()
        return 0 if qn.error is None and qn.done.is_set() else 1
    finally:
        node.shutdown()


if __name__ == "__main__":
    sys.exit(main())
