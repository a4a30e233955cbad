"""policies.common.normalize: quantile / mean-std round trips, partial stats, stats I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from actquant_core.policies.common.normalize import (
    FeatureStats,
    NormStats,
    find_norm_stats,
    normalize,
    unnormalize,
)

ROUNDTRIP_TOL = 1e-5


def _stats(d=7, seed=0):
    rng = np.random.default_rng(seed)
    q01 = rng.normal(size=d).astype(np.float32)
    return FeatureStats(mean=rng.normal(size=d), std=rng.uniform(0.5, 2, d), q01=q01, q99=q01 + rng.uniform(0.5, 3, d))


@pytest.mark.parametrize("mode", ["quantile", "mean_std"])
def test_roundtrip(mode):
    s = _stats()
    x = np.random.default_rng(1).normal(size=(4, 10, 7)).astype(np.float32)
    y = normalize(x, s, mode)
    np.testing.assert_allclose(unnormalize(y, s, mode), x, atol=ROUNDTRIP_TOL)


def test_quantile_maps_q01_q99_to_minus_one_one():
    s = _stats()
    np.testing.assert_allclose(normalize(s.q01, s), -1.0, atol=1e-6)
    np.testing.assert_allclose(normalize(s.q99, s), 1.0, atol=1e-5)


def test_partial_stats_leave_padding_untouched():
    s = _stats(d=3)
    x = np.arange(8, dtype=np.float32)
    y = normalize(x, s)
    np.testing.assert_array_equal(y[3:], x[3:])
    assert not np.allclose(y[:3], x[:3])
    with pytest.raises(ValueError, match="shorter than its statistics"):
        normalize(x[:2], s)
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.array([np.nan, 0, 0], np.float32), s)


def test_missing_fields_and_bad_stats():
    with pytest.raises(ValueError, match="q01 and q99"):
        normalize(np.zeros(3), FeatureStats(mean=np.zeros(3), std=np.ones(3)))
    with pytest.raises(ValueError, match="different lengths"):
        FeatureStats(q01=np.zeros(3), q99=np.ones(4))
    with pytest.raises(ValueError, match="mode"):
        normalize(np.zeros(3), _stats(3), "minmax")


def test_json_roundtrip_and_discovery(tmp_path):
    ns = NormStats(_stats(8, 1), _stats(7, 2))
    back = NormStats.from_json(ns.to_json())
    np.testing.assert_array_equal(back.actions.q99, ns.actions.q99)
    d = tmp_path / "assets" / "libero"
    d.mkdir(parents=True)
    (d / "norm_stats.json").write_text(json.dumps({"norm_stats": json.loads(ns.to_json())}))
    found = find_norm_stats(tmp_path)
    np.testing.assert_array_equal(found.state.q01, ns.state.q01)
    assert find_norm_stats(tmp_path / "assets") is None


def test_lerobot_processor_safetensors(tmp_path):
    save_file(
        {"observation.state.mean": np.zeros(8, np.float32), "observation.state.std": np.ones(8, np.float32),
         "action.q01": np.full(7, -3, np.float32), "action.q99": np.full(7, 3, np.float32)},
        str(tmp_path / "policy_preprocessor_step_2_normalizer_processor.safetensors"),
    )
    ns = find_norm_stats(tmp_path)
    assert ns.state.q01 is None and ns.state.dim == 8
    np.testing.assert_array_equal(ns.actions.q01, np.full(7, -3, np.float32))
