"""``ControlLoop``: one servo loop for every ``Arm`` (RTDE, simulation, dry-run).

Each tick, at the arm's control rate:

    observe -> (arm faults? stale joint/camera data? watchdog?) -> scheduler.next_command
            -> safety.filter -> arm.send

Faults.  Any of: an arm fault flag (protective / emergency / safeguard stop, program stopped,
disconnected), an exception from the arm, the scheduler or the safety filter, stale joint data,
stale camera data while executing, the chunk watchdog (inference overrun), or a rejected (NaN) chunk
puts the loop into a *latched fault*: ``arm.stop()`` is called in that same tick, every chunk is
dropped, and no command is sent again until recovery.

Recovery rule (documented contract, never automatic):
1. the cause must be gone: ``arm.observe()`` reports no faults and fresh joint data (if the arm has a
   ``recover()`` method, e.g. ``RtdeArm`` re-uploading its control script, it is called first);
2. someone calls ``resume()`` explicitly (operator / node service);
3. chunks observed before the resume are rejected, so motion restarts only from a chunk computed on a
   post-recovery observation; the safety filter restarts at rest from the measured position.

Every exit path of the loop thread (``stop()``, an exception, the end of ``run``) calls
``arm.stop()`` in a ``finally``.  Timing: sleep-until with a final short spin (``MonotonicClock``),
or the arm's own pacing (``start_period`` / ``wait_period``, e.g. ur_rtde initPeriod/waitPeriod)
when ``use_arm_pacing``; the loop counts period jitter, overruns, stalls and safety events.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from actquant_core import constants as C
from actquant_core.robot.arm import Arm, ArmState, JointCommand
from actquant_core.robot.clock import Clock, MonotonicClock
from actquant_core.robot.errors import ArmConnectionError, RecoveryRefused
from actquant_core.robot.safety import Safety, SafetyEvent, SafetyViolation
from actquant_core.robot.scheduler import ChunkScheduler
from actquant_core.runtime.types import ActionChunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlLoopConfig:
    """Settings of ``ControlLoop``.

    Attributes:
        rate_hz: loop rate; None = the arm's ``control_rate_hz``.
        observe_timeout_s: timeout passed to ``arm.observe``.
        check_camera: enforce ``Safety``'s camera timeout while a chunk is executing (feed stamps
            with ``update_camera_stamp``).
        use_arm_pacing: pace with the arm's ``start_period()`` / ``wait_period(token)`` when it has
            them (ur_rtde initPeriod / waitPeriod) instead of the loop clock's ``sleep_until``.  Off by
            default: measured against the UR simulator at 500 Hz, ur_rtde's waitPeriod keeps the GIL
            while it waits (other Python threads got ~35% fewer iterations) and the loop lost ~30% of
            its ticks, while the clock's sleep-until + spin kept every tick (jitter p99 0.5 ms).
        overrun_periods: a tick that starts more than this many periods late counts as an overrun
            and the schedule re-synchronises (no burst of catch-up ticks).
        stats_window: number of recent periods kept for the jitter statistics.
    """

    rate_hz: float | None = None
    observe_timeout_s: float = 0.02
    check_camera: bool = True
    use_arm_pacing: bool = False
    overrun_periods: float = 1.0
    stats_window: int = 200_000

    def __post_init__(self) -> None:
        if self.rate_hz is not None and not (math.isfinite(self.rate_hz) and 1 <= self.rate_hz <= 2000):
            raise ValueError(f"rate_hz={self.rate_hz!r} must be in [1, 2000] Hz or None")
        if not (math.isfinite(self.observe_timeout_s) and self.observe_timeout_s > 0):
            raise ValueError(f"observe_timeout_s={self.observe_timeout_s!r} must be > 0")
        if not self.overrun_periods > 0:
            raise ValueError(f"overrun_periods={self.overrun_periods!r} must be > 0")
        if not self.stats_window >= 2:
            raise ValueError(f"stats_window={self.stats_window!r} must be >= 2")


@dataclass(frozen=True)
class LoopFault:
    """A latched fault: why (a ``SAFETY_*`` kind), when, details, and the events behind it."""

    reason: str
    time: float
    detail: str
    events: tuple[SafetyEvent, ...] = ()

    def to_dict(self) -> dict:
        return {"reason": self.reason, "time": self.time, "detail": self.detail,
                "events": [e.to_dict() for e in self.events]}


@dataclass(frozen=True)
class TickResult:
    """What one tick did.

    Attributes:
        time: clock time at the start of the tick.
        sent: the command the arm reported as sent, None when nothing was sent.
        stalled: the scheduler was holding (newest chunk ran out).
        faulted: the loop is (or just became) faulted.
        events: safety events of this tick.
    """

    time: float
    sent: JointCommand | None
    stalled: bool = False
    faulted: bool = False
    events: tuple[SafetyEvent, ...] = ()


def _stats_ms(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan, "n": 0}
    return {"p50": float(np.percentile(x, 50) * 1e3), "p99": float(np.percentile(x, 99) * 1e3),
            "max": float(np.max(x) * 1e3), "n": int(x.size)}


@dataclass
class LoopReport:
    """Counters and timing of a ``ControlLoop`` (times in ms; each timing dict has p50 / p99 / max / n).

    ``period_ms``: tick-to-tick period; ``jitter_ms``: |period - nominal|; ``tick_compute_ms``: time
    spent inside one tick; ``obs_to_command_ms``: observation (image) time of each accepted chunk to the
    first servo command sent after it (inference latency + waiting for the next tick).
    """

    rate_hz: float
    ticks: int
    commands_sent: int
    idle_ticks: int
    faulted_ticks: int
    stall_ticks: int
    stall_episodes: int
    late_ticks: int
    overruns: int
    period_ms: dict[str, float]
    jitter_ms: dict[str, float]
    tick_compute_ms: dict[str, float]
    obs_to_command_ms: dict[str, float]
    safety_counts: dict[str, int]
    faults: list[dict] = field(default_factory=list)
    scheduler: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, str]:
        """Flat string key/values (e.g. for diagnostic_msgs/KeyValue): counters, p50/p99/max timings,
        safety event counts as ``safety.<kind>``, and the latest fault reason (empty when none)."""
        out: dict[str, str] = {}
        for key in ("rate_hz", "ticks", "commands_sent", "idle_ticks", "faulted_ticks", "stall_ticks",
                    "stall_episodes", "late_ticks", "overruns"):
            out[key] = str(getattr(self, key))
        for name in ("period_ms", "jitter_ms", "tick_compute_ms", "obs_to_command_ms"):
            for stat in ("p50", "p99", "max"):
                out[f"{name}.{stat}"] = f"{getattr(self, name)[stat]:.3f}"
        for kind, n in sorted(self.safety_counts.items()):
            out[f"safety.{kind}"] = str(n)
        out["last_fault"] = self.faults[-1]["reason"] if self.faults else ""
        return out


class ControlLoop:
    """Drive one ``Arm`` from a ``ChunkScheduler`` through ``Safety``; see the module docstring.

    Thread model: the loop runs in its own thread (``start``/``stop``) or in the caller's
    (``run``/``step``); ``submit_chunk``, ``update_camera_stamp``, ``needs_new_chunk``,
    ``resume`` and ``report`` may be called from any other thread.
    """

    def __init__(self, arm: Arm, scheduler: ChunkScheduler, safety: Safety,
                 config: ControlLoopConfig | None = None, clock: Clock | None = None) -> None:
        self.arm = arm
        self.scheduler = scheduler
        self.safety = safety
        self.config = config or ControlLoopConfig()
        self.clock = clock or MonotonicClock()
        rate = self.config.rate_hz if self.config.rate_hz is not None else float(arm.control_rate_hz)
        if not (math.isfinite(rate) and 1 <= rate <= 2000):
            raise ValueError(f"control rate {rate!r} Hz (from the arm or config) must be in [1, 2000]")
        self.rate_hz = rate
        self.period = 1.0 / rate
        self._lock = threading.RLock()
        self._fault: LoopFault | None = None
        self._faults: list[LoopFault] = []
        self._last_state: ArmState | None = None
        self._camera_stamp: float | None = None
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self.error: BaseException | None = None
        # counters
        self._ticks = 0
        self._sent = 0
        self._idle = 0
        self._faulted_ticks = 0
        self._stall_ticks = 0
        self._stall_episodes = 0
        self._was_stalled = False
        self._late = 0
        self._overruns = 0
        self._last_tick_start: float | None = None
        self._periods: collections.deque[float] = collections.deque(maxlen=self.config.stats_window)
        self._compute: collections.deque[float] = collections.deque(maxlen=self.config.stats_window)
        self._obs_to_cmd: collections.deque[float] = collections.deque(maxlen=10_000)
        self._pending_obs: float | None = None

    # -- inputs from other threads ----------------------------------------------------------------
    def update_camera_stamp(self, stamp: float) -> None:
        """The newest camera frame was taken at ``stamp`` (loop clock)."""
        with self._lock:
            if self._camera_stamp is None or stamp > self._camera_stamp:
                self._camera_stamp = float(stamp)

    def latest_state(self) -> ArmState | None:
        """The last arm state observed by the loop (for building policy observations)."""
        with self._lock:
            return self._last_state

    @property
    def fault(self) -> LoopFault | None:
        """The latched fault, None when healthy."""
        with self._lock:
            return self._fault

    def needs_new_chunk(self) -> bool:
        """True when the inference worker should start the next policy call now."""
        with self._lock:
            if self._fault is not None:
                return False
            return self.scheduler.needs_new_chunk(self.clock.now())

    def mark_chunk_requested(self) -> None:
        self.scheduler.mark_requested(self.clock.now())

    def submit_chunk(self, chunk: ActionChunk | np.ndarray, obs_time: float | None = None) -> bool:
        """Hand a new action chunk to the loop.

        Args:
            chunk: an ``ActionChunk`` (actions [H, 6|7]; its ``stamp`` is the observation time on the
                loop clock) or a bare [H, 6|7] array.
            obs_time: overrides the observation time (defaults to ``chunk.stamp``, or now for arrays).

        Returns:
            True when the scheduler accepted it; False when rejected as stale or while faulted.

        Raises:
            SafetyViolation: non-finite values or a bad shape; the loop latches a fault and stops the
                arm before raising, so nothing is sent after such a chunk.
        """
        now = self.clock.now()
        if isinstance(chunk, ActionChunk):
            actions = chunk.actions
            obs = chunk.stamp if obs_time is None else obs_time
        else:
            actions = chunk
            obs = now if obs_time is None else obs_time
        with self._lock:
            if self._fault is not None:
                log.warning("chunk dropped: loop faulted (%s)", self._fault.reason)
                self.scheduler.cancel_request()
                return False
            try:
                self.safety.check_chunk(actions, now)
            except SafetyViolation as exc:
                self._enter_fault(C.SAFETY_NONFINITE if any(e.kind == C.SAFETY_NONFINITE for e in exc.events)
                                  else C.SAFETY_BAD_SHAPE, now, str(exc), exc.events)
                raise
            q = None if self._last_state is None else self._last_state.q
            ok = self.scheduler.submit(actions, now, obs_time=obs, current_q=q)
            if ok:
                self.safety.kick_watchdog(now)
                self._pending_obs = float(obs)
            return ok

    # -- fault handling ---------------------------------------------------------------------------
    def _enter_fault(self, reason: str, now: float, detail: str, events: tuple[SafetyEvent, ...] = ()) -> None:
        if not events:
            ev = SafetyEvent(reason, -1, math.nan, math.nan, now, detail)
            self.safety.record(ev)
            events = (ev,)
        fault = LoopFault(reason, now, detail, tuple(events))
        first = self._fault is None
        self._fault = fault
        self._faults.append(fault)
        self._safe_stop()
        self.scheduler.reset(now)
        self.safety.disarm_watchdog()
        self.safety.reset()
        if first:
            log.error("control loop fault at %.4f: %s (%s); arm stopped, waiting for resume()", now, reason, detail)

    def _safe_stop(self) -> None:
        try:
            self.arm.stop()
        except Exception:  # the protocol says stop never raises; make sure of it anyway
            log.exception("arm.stop() raised")

    def hold(self) -> None:
        """Stop executing without a fault (episode end, operator pause): drop every chunk, stop the arm,
        disarm the chunk watchdog.  The loop keeps observing; the next accepted chunk (observed after
        this call) starts motion again, without ``resume()``."""
        with self._lock:
            now = self.clock.now()
            self.scheduler.reset(now)
            self.safety.disarm_watchdog()
            self.safety.reset()
            self._pending_obs = None
            self._was_stalled = False
            if self._fault is None:
                self._safe_stop()
            log.info("control loop holding at %.4f (chunks dropped)", now)

    def resume(self) -> None:
        """Leave the latched fault (see the recovery rule in the module docstring).

        Raises:
            RecoveryRefused: the arm still reports faults, its data is stale, or ``recover()`` failed.
        """
        with self._lock:
            if self._fault is None:
                return
            recover = getattr(self.arm, "recover", None)
            if callable(recover):
                try:
                    recover()
                except Exception as exc:
                    raise RecoveryRefused(f"arm.recover() failed: {exc!r}") from exc
            try:
                state = self.arm.observe(self.config.observe_timeout_s)
            except Exception as exc:
                raise RecoveryRefused(f"arm.observe() failed: {exc!r}") from exc
            if state.faults:
                raise RecoveryRefused(f"arm still reports faults {list(state.faults)}")
            now = self.clock.now()
            dec = self.safety.check_inputs(now, state.stamp, check_camera=False)
            if dec.stop:
                raise RecoveryRefused(f"joint data stale: {dec.reason} (age {dec.events[0].value:.3f} s)")
            self._last_state = state
            self.safety.reset(state.q)
            self.safety.disarm_watchdog()
            self.scheduler.reset(now)
            log.info("control loop resumed at %.4f after fault %s", now, self._fault.reason)
            self._fault = None
            self._was_stalled = False

    # -- one tick ---------------------------------------------------------------------------------
    def step(self) -> TickResult:
        """Run one tick now (no waiting).  Never raises: failures latch a fault and stop the arm."""
        now = self.clock.now()
        with self._lock:
            if self._last_tick_start is not None:
                self._periods.append(now - self._last_tick_start)
            self._last_tick_start = now
            self._ticks += 1
            try:
                res = self._tick(now)
            except ArmConnectionError as exc:  # the link to the controller is gone: an arm fault, not a bug
                log.error("arm connection lost: %s", exc)
                self._enter_fault(C.SAFETY_ARM_FAULT, now, f"{C.FAULT_DISCONNECTED}: {exc}")
                res = TickResult(now, None, faulted=True)
            except Exception as exc:  # a bug or an arm exception: fail safe
                log.exception("control tick raised")
                self._enter_fault(C.SAFETY_EXCEPTION, now, repr(exc))
                res = TickResult(now, None, faulted=True)
            if res.faulted:
                self._faulted_ticks += 1
            self._compute.append(self.clock.now() - now)
            return res

    def _tick(self, now: float) -> TickResult:
        cfg = self.config
        if self._fault is not None:
            try:  # keep the state fresh for diagnostics and resume(), never command
                self._last_state = self.arm.observe(cfg.observe_timeout_s)
            except Exception as exc:
                log.debug("observe while faulted raised %r", exc)
            return TickResult(now, None, faulted=True)
        try:
            state = self.arm.observe(cfg.observe_timeout_s)
        except Exception as exc:
            self._enter_fault(C.SAFETY_EXCEPTION, now, f"observe raised {exc!r}")
            return TickResult(now, None, faulted=True)
        self._last_state = state
        if state.faults:
            self._enter_fault(C.SAFETY_ARM_FAULT, now, ",".join(state.faults))
            return TickResult(now, None, faulted=True)
        active = self.scheduler.active
        dec = self.safety.check_inputs(now, state.stamp, self._camera_stamp,
                                       check_camera=cfg.check_camera and active)
        if not dec.stop and active:
            dec = self.safety.check_watchdog(now)
        if dec.stop:
            self._enter_fault(dec.events[0].kind, now, dec.reason, dec.events)
            return TickResult(now, None, faulted=True, events=dec.events)
        sc = self.scheduler.next_command(now)
        if sc is None:
            self._idle += 1
            return TickResult(now, None)
        if sc.stalled:
            self._stall_ticks += 1
            if not self._was_stalled:
                self._stall_episodes += 1
        self._was_stalled = sc.stalled
        if sc.late:
            self._late += 1
        safe_cmd, events = self.safety.filter(sc.cmd, state, self.period, now)
        try:
            sent = self.arm.send(safe_cmd)
        except Exception as exc:
            self._enter_fault(C.SAFETY_EXCEPTION, now, f"send raised {exc!r}")
            return TickResult(now, None, stalled=sc.stalled, faulted=True, events=tuple(events))
        self._sent += 1
        if self._pending_obs is not None:  # first command shaped by the newest chunk
            self._obs_to_cmd.append(now - self._pending_obs)
            self._pending_obs = None
        return TickResult(now, sent, stalled=sc.stalled, events=tuple(events))

    # -- running ----------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None, max_ticks: int | None = None) -> None:
        """Run the periodic loop in the calling thread until ``stop()``, ``duration_s`` (loop clock)
        or ``max_ticks``; the arm is stopped on every exit."""
        if duration_s is None and max_ticks is None and threading.current_thread() is threading.main_thread():
            log.info("ControlLoop.run without a bound: runs until stop() from another thread")
        self._stop_evt.clear()
        self._loop(duration_s, max_ticks)

    def _loop(self, duration_s: float | None, max_ticks: int | None) -> None:
        pace = None
        if self.config.use_arm_pacing:
            start_p = getattr(self.arm, "start_period", None)
            wait_p = getattr(self.arm, "wait_period", None)
            if callable(start_p) and callable(wait_p):
                pace = (start_p, wait_p)
            else:
                log.warning("use_arm_pacing set but %s has no start_period/wait_period; using the clock",
                            type(self.arm).__name__)
        with self._lock:
            self._last_tick_start = None  # periods are measured within one run
        try:
            t_start = self.clock.now()
            next_t = t_start
            n = 0
            while not self._stop_evt.is_set():
                if duration_s is not None and self.clock.now() - t_start >= duration_s:
                    break
                if max_ticks is not None and n >= max_ticks:
                    break
                token = pace[0]() if pace else None
                self.step()
                n += 1
                next_t += self.period
                late = self.clock.now() - next_t
                if late > self.config.overrun_periods * self.period:
                    with self._lock:
                        self._overruns += 1
                    next_t = self.clock.now()
                if pace:
                    pace[1](token)
                else:
                    self.clock.sleep_until(next_t)
        except BaseException as exc:
            self.error = exc
            log.exception("control loop terminated by an exception")
            raise
        finally:
            self._safe_stop()

    def start(self) -> None:
        """Run the loop in its own (daemon) thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("control loop already running")
        self._stop_evt.clear()

        def target() -> None:
            try:
                self._loop(None, None)
            except BaseException:  # already logged and stored in self.error
                pass

        self._thread = threading.Thread(target=target, name="actquant-control-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the loop thread (if any) and the arm.  Idempotent."""
        self._stop_evt.set()
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout_s)
            if th.is_alive():
                log.error("control loop thread did not exit within %.1f s", timeout_s)
        self._thread = None
        self._safe_stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "ControlLoop":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- diagnostics ------------------------------------------------------------------------------
    def report(self) -> LoopReport:
        with self._lock:
            periods = np.asarray(self._periods, dtype=np.float64)
            compute = np.asarray(self._compute, dtype=np.float64)
            return LoopReport(
                rate_hz=self.rate_hz, ticks=self._ticks, commands_sent=self._sent, idle_ticks=self._idle,
                faulted_ticks=self._faulted_ticks, stall_ticks=self._stall_ticks,
                stall_episodes=self._stall_episodes, late_ticks=self._late, overruns=self._overruns,
                period_ms=_stats_ms(periods), jitter_ms=_stats_ms(np.abs(periods - self.period)),
                tick_compute_ms=_stats_ms(compute),
                obs_to_command_ms=_stats_ms(np.asarray(self._obs_to_cmd, dtype=np.float64)),
                safety_counts=self.safety.counts,
                faults=[f.to_dict() for f in self._faults], scheduler=self.scheduler.stats.to_dict(),
            )
