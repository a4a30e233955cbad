"""Chunk scheduler: action chunks at the policy rate -> a servo stream at the controller rate.

Time model.  A chunk ``actions[H, A]`` (A = 6 joint position targets, or 7 with the gripper in [0, 1]
last) holds targets spaced ``dt_p = 1 / policy_rate_hz`` apart: action ``k`` is the target at time
``t0 + k * dt_p``.  Between knots the scheduler interpolates (``linear`` or ``cubic`` = uniform
Catmull-Rom, which passes through every knot, is C1, and reproduces quadratics exactly away from the
ends; the gripper column is always linear).  Outside ``[t0, t0 + (H-1) dt_p]`` the ends are held.

Where a new chunk starts (``t0``) depends on the mode:

- ``blend``: ``t0`` = arrival time; action 0 starts when the chunk arrives (latency ignored, as in
  naive asynchronous chunking).
- ``rtc`` (real-time-chunking style): ``t0`` = the observation time the chunk was computed from, so
  the prefix that corresponds to the measured inference latency (``arrival - obs_time``) is skipped:
  execution continues at the action that belongs to "now".

In both modes the switch from the old trajectory to the new one is a cross-fade over
``blend_window_s``: ``q(t) = (1 - w) q_old(t) + w q_new(t)`` with the smoothstep weight
``w = 3 s^2 - 2 s^3``, ``s = (t - t_arrival) / W``; at ``t_arrival`` the output equals the old
trajectory (no jump) and the extra speed is at most ``1.5 |q_new - q_old| / W``.  W = 0 switches hard.

Execution horizon ``E``: each chunk is meant to run for ``E`` actions, i.e. until
``t_exec_end = t0 + E dt_p``; ``needs_new_chunk(now)`` turns true at
``t_exec_end - W - latency_estimate - request_margin_s`` so that the next chunk (and its blend) is
in place by then.  The latency estimate is the largest of the last ``latency_window`` measured
latencies, with ``initial_latency_s`` counted as one of them until it ages out.  With one inference
in flight at a time, staying inside the execution horizon needs ``E dt_p >= 2 L_max + W + margin``
in ``rtc`` mode (a chunk starts executing at ``obs + L`` and its successor cannot be observed
earlier); shorter horizons run into the remainder, which is fine as long as ``H dt_p`` covers it.
When the next chunk is late the scheduler keeps following the current chunk's remainder
(``use_remainder``, counted as late ticks); when that runs out too it holds the last target and
counts a stall.

Deterministic: all methods take ``now`` from the caller's clock; nothing sleeps.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import asdict, dataclass

import numpy as np

from actquant_core import constants as C
from actquant_core.robot.arm import JointCommand

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """Settings of ``ChunkScheduler``.

    Attributes:
        policy_rate_hz: spacing of the actions inside a chunk (1 / dt_p), e.g. 10 Hz.
        execution_horizon: actions of each chunk to execute before the next chunk takes over (>= 1).
        interpolation: "linear" or "cubic" (Catmull-Rom) between action knots.
        mode: "blend" (new chunk starts at arrival) or "rtc" (aligned to its observation time).
        blend_window_s: cross-fade duration at chunk switches (s); 0 switches hard.
        initial_latency_s: inference latency assumed before the first measurement (s).
        latency_window: number of recent latency measurements whose maximum is the estimate.
        request_margin_s: extra lead time (s) added when deciding to request the next chunk.
        use_remainder: keep following actions past the execution horizon while the next chunk is late.
        max_latency_s: a chunk whose observation is older than this on arrival is rejected as stale.
    """

    policy_rate_hz: float = 10.0
    execution_horizon: int = 5
    interpolation: str = C.SCHED_INTERP_CUBIC
    mode: str = C.SCHED_MODE_RTC
    blend_window_s: float = 0.1
    initial_latency_s: float = 0.15
    latency_window: int = 20
    request_margin_s: float = 0.05
    use_remainder: bool = True
    max_latency_s: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.policy_rate_hz) and 0 < self.policy_rate_hz <= 1000):
            raise ValueError(f"policy_rate_hz={self.policy_rate_hz!r} must be in (0, 1000]")
        if not (isinstance(self.execution_horizon, int) and self.execution_horizon >= 1):
            raise ValueError(f"execution_horizon={self.execution_horizon!r} must be an int >= 1")
        if self.interpolation not in (C.SCHED_INTERP_LINEAR, C.SCHED_INTERP_CUBIC):
            raise ValueError(f"interpolation={self.interpolation!r} must be "
                             f"{C.SCHED_INTERP_LINEAR!r} or {C.SCHED_INTERP_CUBIC!r}")
        if self.mode not in (C.SCHED_MODE_BLEND, C.SCHED_MODE_RTC):
            raise ValueError(f"mode={self.mode!r} must be {C.SCHED_MODE_BLEND!r} or {C.SCHED_MODE_RTC!r}")
        if not (math.isfinite(self.blend_window_s) and 0 <= self.blend_window_s <= 2.0):
            raise ValueError(f"blend_window_s={self.blend_window_s!r} must be in [0, 2] s")
        if not (math.isfinite(self.initial_latency_s) and 0 <= self.initial_latency_s <= 10.0):
            raise ValueError(f"initial_latency_s={self.initial_latency_s!r} must be in [0, 10] s")
        if not (isinstance(self.latency_window, int) and self.latency_window >= 1):
            raise ValueError(f"latency_window={self.latency_window!r} must be an int >= 1")
        if not (math.isfinite(self.request_margin_s) and 0 <= self.request_margin_s <= 5.0):
            raise ValueError(f"request_margin_s={self.request_margin_s!r} must be in [0, 5] s")
        if not (math.isfinite(self.max_latency_s) and self.max_latency_s > 0):
            raise ValueError(f"max_latency_s={self.max_latency_s!r} must be > 0")

    @property
    def dt_p(self) -> float:
        return 1.0 / self.policy_rate_hz


@dataclass(frozen=True)
class ScheduledCommand:
    """One servo-rate command from the scheduler.

    Attributes:
        cmd: joint target [6] (rad) and gripper target (NaN when the chunk has no gripper column).
        stalled: the newest chunk ran out; this is a hold of its last target.
        late: past the newest chunk's execution horizon (following its remainder).
        blending: a cross-fade between two chunks is in progress.
        chunk_id: sequence number of the newest chunk (1-based).
    """

    cmd: JointCommand
    stalled: bool
    late: bool
    blending: bool
    chunk_id: int


@dataclass
class SchedulerStats:
    """Counters of ``ChunkScheduler`` (see ``to_dict``)."""

    chunks_received: int = 0
    chunks_rejected: int = 0
    ticks: int = 0
    late_ticks: int = 0
    stall_ticks: int = 0
    stall_episodes: int = 0
    requests: int = 0
    last_latency_s: float = math.nan
    latency_estimate_s: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def interpolate_chunk(actions: np.ndarray, s: float, method: str) -> np.ndarray:
    """Evaluate a chunk at fractional action index ``s``.

    Args:
        actions: [H, A] knots (A >= 6; columns 6.. are interpolated linearly).
        s: fractional index; clamped to [0, H-1].
        method: "linear" or "cubic" (Catmull-Rom, ends extended linearly).

    Returns:
        [A] interpolated action.
    """
    n = actions.shape[0]
    if n == 1:
        return actions[0].astype(np.float64, copy=True)
    s = min(max(s, 0.0), n - 1.0)
    i = min(int(math.floor(s)), n - 2)
    f = s - i
    p1 = actions[i]
    p2 = actions[i + 1]
    out = (1.0 - f) * p1 + f * p2
    if method == C.SCHED_INTERP_CUBIC:
        p0 = actions[i - 1] if i >= 1 else 2.0 * p1 - p2
        p3 = actions[i + 2] if i + 2 < n else 2.0 * p2 - p1
        m1 = 0.5 * (p2 - p0)
        m2 = 0.5 * (p3 - p1)
        f2 = f * f
        f3 = f2 * f
        cub = ((2 * f3 - 3 * f2 + 1) * p1 + (f3 - 2 * f2 + f) * m1
               + (-2 * f3 + 3 * f2) * p2 + (f3 - f2) * m2)
        j = C.UR_NUM_JOINTS
        out[:j] = cub[:j]
    return out


class _Traj:
    def eval(self, t: float) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _Hold(_Traj):
    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def eval(self, t: float) -> np.ndarray:
        return self.a


class _Chunk(_Traj):
    def __init__(self, actions: np.ndarray, t0: float, dt_p: float, method: str, chunk_id: int) -> None:
        self.actions = actions  # [H, A]
        self.t0 = t0
        self.dt_p = dt_p
        self.method = method
        self.chunk_id = chunk_id
        self.t_last = t0 + (actions.shape[0] - 1) * dt_p

    def eval(self, t: float) -> np.ndarray:
        return interpolate_chunk(self.actions, (t - self.t0) / self.dt_p, self.method)


class _Blend(_Traj):
    def __init__(self, old: _Traj, new: _Traj, t_start: float, window: float) -> None:
        self.old = old
        self.new = new
        self.t_start = t_start
        self.window = window

    def done(self, t: float) -> bool:
        return t >= self.t_start + self.window

    def eval(self, t: float) -> np.ndarray:
        s = (t - self.t_start) / self.window
        if s >= 1.0:
            return self.new.eval(t)
        s = max(s, 0.0)
        w = s * s * (3.0 - 2.0 * s)
        a_old = self.old.eval(t)
        a_new = self.new.eval(t)
        out = (1.0 - w) * a_old + w * a_new
        # a NaN gripper on one side (chunk without gripper column) must not poison the other side
        if out.shape[0] > C.UR_NUM_JOINTS:
            g_old, g_new = a_old[C.UR_NUM_JOINTS], a_new[C.UR_NUM_JOINTS]
            if math.isnan(g_old) or math.isnan(g_new):
                out[C.UR_NUM_JOINTS] = g_old if math.isnan(g_new) else g_new
        return out


def _pad7(a: np.ndarray) -> np.ndarray:
    """[H, 6|7] -> [H, 7] with NaN gripper when absent."""
    if a.shape[1] == C.UR_NUM_JOINTS:
        return np.concatenate([a, np.full((a.shape[0], 1), np.nan)], axis=1)
    return a


class ChunkScheduler:
    """Turns action chunks into servo commands; see the module docstring for the time model.

    Usage (one producer thread, one consumer thread; methods are thread-safe):
        if sched.needs_new_chunk(now): sched.mark_requested(now); ...start inference...
        sched.submit(actions, now=arrival_time, obs_time=observation_stamp, current_q=q)
        cmd = sched.next_command(now)   # at the controller rate; None until the first chunk
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.stats = SchedulerStats(latency_estimate_s=self.config.initial_latency_s)
        self._lock = threading.Lock()
        # seeded with the prior, which ages out after latency_window measurements
        self._latencies: collections.deque[float] = collections.deque(
            [self.config.initial_latency_s], maxlen=self.config.latency_window)
        self._traj: _Traj | None = None
        self._newest: _Chunk | None = None
        self._blend_active = False
        self._requested_at: float | None = None
        self._reset_time = -math.inf
        self._stalled = False
        self._next_id = 1

    # -- state ------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True once a chunk has been accepted (until ``reset``)."""
        with self._lock:
            return self._newest is not None

    @property
    def latency_estimate_s(self) -> float:
        with self._lock:
            return self._latency_estimate()

    def _latency_estimate(self) -> float:
        return max(self._latencies)

    def exec_end_time(self) -> float | None:
        """Time at which the newest chunk's execution horizon ends (None without a chunk)."""
        with self._lock:
            return self._exec_end()

    def _exec_end(self) -> float | None:
        if self._newest is None:
            return None
        return self._newest.t0 + self.config.execution_horizon * self.config.dt_p

    def reset(self, now: float) -> None:
        """Drop every chunk and pending request; chunks observed before ``now`` will be rejected."""
        with self._lock:
            self._traj = None
            self._newest = None
            self._blend_active = False
            self._requested_at = None
            self._reset_time = now
            self._stalled = False

    # -- requests ---------------------------------------------------------------------------------
    def needs_new_chunk(self, now: float) -> bool:
        """True when inference for the next chunk should start now (none outstanding).

        Without a chunk: true at once.  Otherwise true from
        ``t_exec_end - blend_window_s - latency_estimate - request_margin_s`` on.
        """
        cfg = self.config
        with self._lock:
            if self._requested_at is not None:
                return False
            end = self._exec_end()
            if end is None:
                return True
            lead = cfg.blend_window_s + self._latency_estimate() + cfg.request_margin_s
            return now >= end - lead

    def mark_requested(self, now: float) -> None:
        """The producer started inference for the next chunk at ``now``."""
        with self._lock:
            self._requested_at = now
            self.stats.requests += 1

    def cancel_request(self) -> None:
        """The outstanding inference failed or was abandoned."""
        with self._lock:
            self._requested_at = None

    @property
    def request_outstanding(self) -> bool:
        with self._lock:
            return self._requested_at is not None

    # -- chunks -----------------------------------------------------------------------------------
    def submit(self, actions: np.ndarray, now: float, obs_time: float | None = None,
               current_q: np.ndarray | None = None) -> bool:
        """Accept a new chunk at ``now`` (its arrival time).

        Args:
            actions: [H, 6 | 7] joint position targets (rad) [+ gripper in [0, 1]], finite (run
                ``Safety.check_chunk`` first).
            now: arrival time on the scheduler's clock.
            obs_time: time of the observation the chunk was computed from (same clock); defaults
                to ``now`` (zero latency).  Used for the latency measurement and, in ``rtc`` mode,
                as the chunk's time origin.
            current_q: [6] current joint positions; used as the starting point of the cross-fade
                when there is no previous chunk.

        Returns:
            True when accepted; False when rejected as stale (observed before the last ``reset``,
            older than ``max_latency_s``, or, in ``rtc`` mode, already entirely in the past).

        Raises:
            ValueError: bad shape, non-finite values, or ``obs_time`` in the future.
        """
        cfg = self.config
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] not in (C.UR_NUM_JOINTS, C.UR_NUM_JOINTS + 1):
            raise ValueError(f"actions must be [H, 6] or [H, 7], got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain non-finite values; run Safety.check_chunk first")
        obs = now if obs_time is None else float(obs_time)
        latency = now - obs
        if latency < -1e-6:
            raise ValueError(f"obs_time={obs!r} is after the arrival time now={now!r}: clocks differ?")
        latency = max(latency, 0.0)
        a = _pad7(a.copy())
        with self._lock:
            self._requested_at = None
            if obs < self._reset_time:
                self.stats.chunks_rejected += 1
                log.warning("rejected chunk observed at %.3f, before the reset at %.3f", obs, self._reset_time)
                return False
            if latency > cfg.max_latency_s:
                self.stats.chunks_rejected += 1
                log.warning("rejected chunk with latency %.3f s > max_latency_s %.3f", latency, cfg.max_latency_s)
                return False
            self._latencies.append(latency)
            self.stats.last_latency_s = latency
            self.stats.latency_estimate_s = self._latency_estimate()
            t0 = obs if cfg.mode == C.SCHED_MODE_RTC else now
            chunk = _Chunk(a, t0, cfg.dt_p, cfg.interpolation, self._next_id)
            if cfg.mode == C.SCHED_MODE_RTC and chunk.t_last < now and a.shape[0] > 1:
                self.stats.chunks_rejected += 1
                log.warning("rejected chunk: all %d actions are older than now (latency %.3f s)",
                            a.shape[0], latency)
                return False
            self._next_id += 1
            old = self._traj
            if old is None and current_q is not None:
                q = np.asarray(current_q, dtype=np.float64).reshape(-1)
                if q.shape != (C.UR_NUM_JOINTS,) or not np.all(np.isfinite(q)):
                    raise ValueError(f"current_q must be 6 finite values, got {q!r}")
                old = _Hold(np.concatenate([q, [np.nan]]))
            if old is not None and cfg.blend_window_s > 0:
                self._traj = _Blend(old, chunk, now, cfg.blend_window_s)
                self._blend_active = True
            else:
                self._traj = chunk
                self._blend_active = False
            self._newest = chunk
            self.stats.chunks_received += 1
            return True

    def next_command(self, now: float) -> ScheduledCommand | None:
        """The servo target for time ``now``; None before the first chunk (or after ``reset``)."""
        cfg = self.config
        with self._lock:
            if self._traj is None or self._newest is None:
                return None
            traj = self._traj
            if isinstance(traj, _Blend) and traj.done(now):
                self._traj = traj = traj.new
                self._blend_active = False
            newest = self._newest
            end_exec = newest.t0 + cfg.execution_horizon * cfg.dt_p
            end_usable = newest.t_last if cfg.use_remainder else min(end_exec, newest.t_last)
            stalled = now > end_usable + 1e-9
            late = now > end_exec + 1e-9
            t_eval = min(now, end_usable) if stalled else now
            a = traj.eval(t_eval)
            self.stats.ticks += 1
            if late:
                self.stats.late_ticks += 1
            if stalled:
                self.stats.stall_ticks += 1
                if not self._stalled:
                    self.stats.stall_episodes += 1
                    log.warning("chunk %d ran out at %.3f: holding its last target", newest.chunk_id, now)
            self._stalled = stalled
            blending = isinstance(traj, _Blend)
        g = float(a[C.UR_NUM_JOINTS]) if a.shape[0] > C.UR_NUM_JOINTS else math.nan
        cmd = JointCommand(q=np.array(a[: C.UR_NUM_JOINTS], dtype=np.float64), gripper=g)
        return ScheduledCommand(cmd=cmd, stalled=stalled, late=late, blending=blending, chunk_id=newest.chunk_id)
