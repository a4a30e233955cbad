"""HSIC estimators vs brute-force numpy references; blocked == full; accumulator scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actquant_core.quant.hsic import (
    GaussianKernel,
    HsicAccumulator,
    HsicConfig,
    LinearKernel,
    centred_traces,
    hbar_functional,
    hsic,
    hsic_cka,
    hsic_nocco,
    median_sigma2,
)

RTOL_EXACT = 1e-9  # float64 blocked vs brute force
RTOL_NYSTROM = 0.05  # Nyström NOCCO vs exact NOCCO


def _gram_np(Z: np.ndarray, kernel) -> np.ndarray:
    if isinstance(kernel, LinearKernel):
        return Z @ Z.T
    d2 = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * kernel.sigma2))


def _hsic_np(A, B, ka, kb) -> float:
    n = len(A)
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(_gram_np(A, ka) @ H @ _gram_np(B, kb) @ H) / (n - 1) ** 2)


def _median_np(Z) -> float:
    d2 = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    return float(np.median(d2[np.triu_indices(len(Z), 1)]))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_median_sigma2_matches_numpy(rng):
    Z = rng.standard_normal((51, 4))
    assert median_sigma2(Z) == pytest.approx(_median_np(Z), rel=1e-12)
    assert median_sigma2(Z, scale=0.5) == pytest.approx(0.5 * _median_np(Z), rel=1e-12)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_biased_hsic_matches_bruteforce_and_blocks(rng, block):
    n = 64
    A = rng.standard_normal((n, 5)) + 3.0  # offset: Gaussian kernel must be translation invariant
    B = np.tanh(A[:, :2]) + 0.3 * rng.standard_normal((n, 2))
    ka = GaussianKernel(median_sigma2(A))
    for kb in (GaussianKernel(median_sigma2(B)), LinearKernel()):
        ref = _hsic_np(A, B, ka, kb)
        got = hsic(A, B, ka, kb, block_size=block, device="cpu")
        assert got == pytest.approx(ref, rel=RTOL_EXACT)


def test_centred_traces_self_terms(rng):
    n = 40
    A = rng.standard_normal((n, 3))
    ka = GaussianKernel(1.7)
    K = _gram_np(A, ka)
    H = np.eye(n) - 1.0 / n
    ref = np.sum((H @ K @ H) ** 2)
    t = centred_traces([A], [ka], [(0, 0)], block_size=9, device="cpu")
    assert t[(0, 0)] == pytest.approx(ref, rel=RTOL_EXACT)


def test_independent_near_zero_dependent_clearly_positive(rng):
    n = 500
    X = rng.standard_normal((n, 4))
    Y_ind = rng.standard_normal((n, 3))
    Y_dep = np.stack([X[:, 0] ** 2, np.sin(2 * X[:, 1]), X[:, 2]], 1) + 0.1 * rng.standard_normal((n, 3))
    kx = GaussianKernel(median_sigma2(X))
    h_ind = hsic(X, Y_ind, kx, GaussianKernel(median_sigma2(Y_ind)), device="cpu")
    h_dep = hsic(X, Y_dep, kx, GaussianKernel(median_sigma2(Y_dep)), device="cpu")
    # under independence the biased estimator is O(1/n): the self-term scale bounds it
    h_self = hsic(X, X, kx, kx, device="cpu")
    assert abs(h_ind) < 0.02 * h_self
    assert h_dep > 10 * abs(h_ind)
    c_ind = hsic_cka(X, Y_ind, kx, LinearKernel(), device="cpu")
    c_dep = hsic_cka(X, Y_dep, kx, LinearKernel(), device="cpu")
    assert c_ind < 0.05 and c_dep > 0.3


def test_cka_matches_bruteforce_and_is_one_on_self(rng):
    n = 50
    A = rng.standard_normal((n, 4))
    B = A @ rng.standard_normal((4, 2)) + 0.5 * rng.standard_normal((n, 2))
    ka, kb = GaussianKernel(median_sigma2(A)), LinearKernel()
    ref = _hsic_np(A, B, ka, kb) / np.sqrt(_hsic_np(A, A, ka, ka) * _hsic_np(B, B, kb, kb))
    assert hsic_cka(A, B, ka, kb, block_size=13, device="cpu") == pytest.approx(ref, rel=RTOL_EXACT)
    assert hsic_cka(A, A, ka, ka, device="cpu") == pytest.approx(1.0, rel=RTOL_EXACT)


def _nocco_np(A, B, ka, kb, eps):
    n = len(A)
    H = np.eye(n) - 1.0 / n
    Ka, Kb = H @ _gram_np(A, ka) @ H, H @ _gram_np(B, kb) @ H
    Ra = Ka @ np.linalg.inv(Ka + n * eps * np.eye(n))
    Rb = Kb @ np.linalg.inv(Kb + n * eps * np.eye(n))
    return float(np.trace(Ra @ Rb))


def test_nocco_exact_and_nystrom(rng):
    n = 120
    A = rng.standard_normal((n, 3))
    B = np.stack([np.cos(A[:, 0]), A[:, 1] * A[:, 2]], 1) + 0.2 * rng.standard_normal((n, 2))
    ka, kb = GaussianKernel(median_sigma2(A)), LinearKernel()
    eps = 1e-2
    ref = _nocco_np(A, B, ka, kb, eps)
    assert hsic_nocco(A, B, ka, kb, eps=eps, rank=n, device="cpu") == pytest.approx(ref, rel=1e-7)
    approx = hsic_nocco(A, B, ka, kb, eps=eps, rank=80, device="cpu")
    assert approx == pytest.approx(ref, rel=RTOL_NYSTROM)


def test_hbar_functional_sign():
    assert hbar_functional(0.2, 0.5, 1.0, 1.0) == pytest.approx(0.3)
    assert hbar_functional(0.2, 0.5, 2.0, 0.0) == pytest.approx(-0.4)


def _stream(acc, X, Y, acts, bs):
    for i in range(0, len(X), bs):
        acc.add_batch(X[i:i + bs], Y[i:i + bs], {k: (zi[i:i + bs], zo[i:i + bs]) for k, (zi, zo) in acts.items()})


def test_accumulator_scores_match_direct_and_rank_action_dependence(rng):
    n = 150
    X = rng.standard_normal((n, 6))
    Y = np.stack([X[:, 0], X[:, 1] ** 2], 1)[:, None, :].repeat(2, 1)  # [n, 2, 2] chunk
    Y = Y + 0.05 * rng.standard_normal(Y.shape)
    W_act = rng.standard_normal((6, 5))
    acts = {
        "blk.0.q": (X, np.tanh(X @ W_act)),  # output keeps the action-relevant directions
        "blk.0.k": (X, rng.standard_normal((n, 5))),  # same input, output unrelated to anything
    }
    acc = HsicAccumulator(HsicConfig(device="cpu", block_size=32))
    _stream(acc, X, Y, acts, 40)
    res = acc.solve()
    assert res.n == n
    Ys = Y.reshape(n, -1)
    Ys = (Ys - Ys.mean(0)) / Ys.std(0)
    kx = GaussianKernel(median_sigma2(X))
    for name, (zi, zo) in acts.items():
        kin, kout = GaussianKernel(median_sigma2(zi)), GaussianKernel(median_sigma2(zo))
        f_in = -_hsic_np(X, zi, kx, kin) + _hsic_np(zi, Ys, kin, LinearKernel())
        f_out = -_hsic_np(X, zo, kx, kout) + _hsic_np(zo, Ys, kout, LinearKernel())
        t = res.terms[name]
        assert t.f_in == pytest.approx(f_in, rel=1e-6)
        assert t.f_out == pytest.approx(f_out, rel=1e-6)
        assert res.scores[name] == pytest.approx(max(f_out - f_in, 0.0), abs=1e-6)  # float32 storage
        assert res.scores[name] >= 0.0
    # unrelated output: F(out) ~ 0 while the relevant output keeps action dependence
    assert res.terms["blk.0.q"].hsic_out_y > 5 * abs(res.terms["blk.0.k"].hsic_out_y)


@pytest.mark.parametrize("est", ["cka", "nocco"])
@pytest.mark.parametrize("mode", ["f_out", "hsic_out_y"])
def test_accumulator_variants_run_and_are_consistent(rng, est, mode):
    n = 60
    X = rng.standard_normal((n, 4))
    Y = X[:, :2] + 0.1 * rng.standard_normal((n, 2))
    acts = {"a": (X, X @ rng.standard_normal((4, 3)))}
    acc = HsicAccumulator(HsicConfig(device="cpu", estimator=est, score=mode))
    _stream(acc, X, Y, acts, 25)
    t = acc.solve().terms["a"]
    expect = t.f_out if mode == "f_out" else t.hsic_out_y
    assert t.score == pytest.approx(expect)
    assert t.hsic_out_y > 0.1


def test_accumulator_errors(rng):
    acc = HsicAccumulator(HsicConfig(device="cpu"))
    with pytest.raises(ValueError, match="at least 2"):
        acc.solve()
    X = rng.standard_normal((4, 3))
    bad = X.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.add_batch(X, X, {"t": (bad, X)})
    acc.add_batch(X, X, {"t": (X, X)})
    with pytest.raises(ValueError, match="names changed"):
        acc.add_batch(X, X, {"u": (X, X)})
    with pytest.raises(ValueError, match="estimator"):
        HsicConfig(estimator="unbiased")


def test_projection_keeps_scores_close(rng):
    n = 80
    X = rng.standard_normal((n, 64))
    Y = X[:, :3]
    acts = {"t": (X, np.tanh(X @ rng.standard_normal((64, 96)) / 8))}
    full = HsicAccumulator(HsicConfig(device="cpu"))
    proj = HsicAccumulator(HsicConfig(device="cpu", project_dim=48, store_dtype="float16"))
    for acc in (full, proj):
        _stream(acc, X, Y, acts, 40)
    a, b = full.solve().terms["t"], proj.solve().terms["t"]
    assert b.hsic_out_y == pytest.approx(a.hsic_out_y, rel=0.25)


def test_torch_inputs_accepted(rng):
    n = 30
    X = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))
    acc = HsicAccumulator(HsicConfig(device="cpu"))
    acc.add_batch(X, X[:, :2], {"t": (X, 2 * X)})
    assert acc.solve().n == n


@pytest.mark.gpu
def test_gpu_float32_blocks_match_cpu_float64():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(5)
    n = 4000
    X = rng.standard_normal((n, 64)).astype(np.float32) + 5.0
    Z = np.tanh(X @ rng.standard_normal((64, 32)).astype(np.float32) / 8)
    Y = X[:, :7] + 0.1 * rng.standard_normal((n, 7)).astype(np.float32)
    kx, kz, ky = GaussianKernel(median_sigma2(X)), GaussianKernel(median_sigma2(Z)), LinearKernel()
    pairs = [(0, 1), (1, 2), (1, 1)]
    ref = centred_traces([X, Z, Y], [kx, kz, ky], pairs, block_size=1000, device="cpu")
    got = centred_traces([X, Z, Y], [kx, kz, ky], pairs, block_size=1024, device="cuda", dtype=torch.float32)
    for p in pairs:
        assert got[p] == pytest.approx(ref[p], rel=1e-4)
