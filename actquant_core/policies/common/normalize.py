"""State/action normalisation (numpy only): quantile (pi0.5) and mean/std (pi0), stats I/O.

Quantile: ``y = (x - q01) / (q99 - q01 + 1e-6) * 2 - 1``; inverse ``x = (y + 1) / 2 * (q99 - q01 + 1e-6) + q01``.
Mean/std: ``y = (x - mean) / (std + 1e-6)``; inverse ``x = y * (std + 1e-6) + mean``.
Stats may be shorter than the vector (openpi pads actions/state to 32 after normalising): only
the first ``len(stats)`` entries are normalised and the rest pass through unchanged.

Sources: openpi ``assets/<asset_id>/norm_stats.json`` (``{"norm_stats": {"state": {"mean", "std",
"q01", "q99"}, "actions": {...}}}``) and lerobot processor safetensors (``observation.state.q01``,
``action.q99``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actquant_core.constants import (
    PI05_LEROBOT_ACTION_PREFIX,
    PI05_LEROBOT_STATE_PREFIX,
    PI05_NORM_KEY_ACTIONS,
    PI05_NORM_KEY_STATE,
    PI05_NORM_STATS_FILE,
)
from actquant_core.policies.common.safetensors_io import read_safetensors

log = logging.getLogger(__name__)

NORM_EPS = 1e-6
NORM_MODES = ("quantile", "mean_std")
_FIELDS = ("mean", "std", "q01", "q99")


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of one vector feature; every present field is a float32 [d] array."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        dims = set()
        for name in _FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            arr = np.asarray(v, dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"FeatureStats.{name} has non-finite values: {arr}")
            object.__setattr__(self, name, arr)
            dims.add(arr.shape[0])
        if len(dims) > 1:
            raise ValueError(f"FeatureStats fields have different lengths: {dims}")

    @property
    def dim(self) -> int:
        for name in _FIELDS:
            v = getattr(self, name)
            if v is not None:
                return int(v.shape[0])
        return 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in _FIELDS if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureStats:
        return cls(**{k: (np.asarray(d[k], dtype=np.float32) if d.get(k) is not None else None) for k in _FIELDS})


@dataclass(frozen=True)
class NormStats:
    """Normalisation statistics for the policy's state and actions."""

    state: FeatureStats
    actions: FeatureStats

    def to_json(self) -> str:
        return json.dumps({PI05_NORM_KEY_STATE: self.state.to_dict(), PI05_NORM_KEY_ACTIONS: self.actions.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        d = json.loads(text)
        d = d.get("norm_stats", d)
        missing = [k for k in (PI05_NORM_KEY_STATE, PI05_NORM_KEY_ACTIONS) if k not in d]
        if missing:
            raise ValueError(f"norm stats JSON lacks keys {missing}; has {sorted(d)}")
        return cls(FeatureStats.from_dict(d[PI05_NORM_KEY_STATE]), FeatureStats.from_dict(d[PI05_NORM_KEY_ACTIONS]))

    def replace(self, **kw) -> NormStats:
        return dataclasses.replace(self, **kw)


def _check_mode(mode: str) -> None:
    if mode not in NORM_MODES:
        raise ValueError(f"normalisation mode must be one of {NORM_MODES}, got {mode!r}")


def _parts(stats: FeatureStats, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) with y = (x - offset) / scale [* 2 - 1 for quantile]."""
    _check_mode(mode)
    if mode == "quantile":
        if stats.q01 is None or stats.q99 is None:
            raise ValueError("quantile normalisation needs q01 and q99 statistics")
        return stats.q01, stats.q99 - stats.q01 + np.float32(NORM_EPS)
    if stats.mean is None or stats.std is None:
        raise ValueError("mean/std normalisation needs mean and std statistics")
    return stats.mean, stats.std + np.float32(NORM_EPS)


def normalize(x: np.ndarray, stats: FeatureStats, mode: str = "quantile") -> np.ndarray:
    """Normalise the first ``stats.dim`` entries of the last axis of x ([..., d_x], d_x >= stats.dim)."""
    x = np.asarray(x, dtype=np.float32)
    d = stats.dim
    if x.shape[-1] < d:
        raise ValueError(f"vector of length {x.shape[-1]} is shorter than its statistics ({d})")
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot normalise a vector with NaN/inf entries")
    offset, scale = _parts(stats, mode)
    y = x.copy()
    z = (x[..., :d] - offset) / scale
    y[..., :d] = z * 2.0 - 1.0 if mode == "quantile" else z
    return y


def unnormalize(y: np.ndarray, stats: FeatureStats, mode: str = "quantile") -> np.ndarray:
    """Inverse of ``normalize`` on the first ``stats.dim`` entries of the last axis."""
    y = np.asarray(y, dtype=np.float32)
    d = stats.dim
    if y.shape[-1] < d:
        raise ValueError(f"vector of length {y.shape[-1]} is shorter than its statistics ({d})")
    offset, scale = _parts(stats, mode)
    x = y.copy()
    z = (y[..., :d] + 1.0) / 2.0 if mode == "quantile" else y[..., :d]
    x[..., :d] = z * scale + offset
    return x


def load_openpi_norm_stats(path: str | Path) -> NormStats:
    """Read an openpi ``norm_stats.json`` file."""
    path = Path(path)
    return NormStats.from_json(path.read_text())


def load_lerobot_norm_stats(
    path: str | Path,
    state_prefix: str = PI05_LEROBOT_STATE_PREFIX,
    action_prefix: str = PI05_LEROBOT_ACTION_PREFIX,
) -> NormStats:
    """Read a lerobot normaliser processor safetensors (keys ``<prefix>.{mean,std,q01,q99}``)."""
    tensors = read_safetensors(path)

    def feature(prefix: str) -> FeatureStats:
        fields = {k: tensors.get(f"{prefix}.{k}") for k in _FIELDS}
        if all(v is None for v in fields.values()):
            raise ValueError(f"{path}: no statistics under prefix {prefix!r}; keys: {sorted(tensors)[:20]}")
        return FeatureStats(**fields)

    return NormStats(feature(state_prefix), feature(action_prefix))


def find_norm_stats(checkpoint_dir: str | Path) -> NormStats | None:
    """Look for norm stats next to a checkpoint: openpi ``assets/<asset_id>/norm_stats.json`` (any depth: ids like
    ``physical-intelligence/libero``; also directly in
    the folder) first, then lerobot ``*processor*.safetensors``.  None when there are none."""
    root = Path(checkpoint_dir)
    if root.is_file():
        root = root.parent
    candidates = sorted(root.glob(f"assets/**/{PI05_NORM_STATS_FILE}")) + sorted(root.glob(PI05_NORM_STATS_FILE))
    if len(candidates) > 1:
        log.warning("several norm_stats.json found, using %s (others: %s)", candidates[0], candidates[1:])
    if candidates:
        return load_openpi_norm_stats(candidates[0])
    for p in sorted(root.glob("*processor*.safetensors")):
        try:
            return load_lerobot_norm_stats(p)
        except ValueError:
            log.debug("%s holds no state/action statistics", p)
    return None
