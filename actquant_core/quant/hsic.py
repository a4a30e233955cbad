"""HSIC estimators and the HBaR action-dependence score of ActQuant's stage 1.

References:
    - Gretton et al., "Measuring Statistical Dependence with Hilbert-Schmidt Norms", ALT 2005 (biased
      estimator ``HSIC = tr(K H L H) / (n-1)^2``, median-heuristic bandwidth).
    - Fukumizu et al., "Kernel Measures of Conditional Dependence", NeurIPS 2007 (normalised
      cross-covariance operator, "NOCCO": ``tr(R_K R_L)``, ``R = K~ (K~ + n eps I)^-1``; the
      CCA-normalised variant, as used by Ma et al., "The HSIC Bottleneck", AAAI 2020).
    - Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019 (CKA,
      ``HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L))``).
    - Wang et al., "Revisiting Hilbert-Schmidt Information Bottleneck for Adversarial Robustness"
      (HBaR), NeurIPS 2021, arXiv 2106.02734: ``F(Z) = -lx HSIC(X, Z) + ly HSIC(Z, Y)``.
    - Akbari et al., "ActQuant", arXiv 2605.24011: per-tensor sensitivity
      ``s = max(F(output) - F(input), 0)`` over token-pooled activations, X = pooled input of the first
      decoder layer, Y = standardised ground-truth action chunk.

Notation: ``n`` samples (calibration frames); ``K``, ``L`` ``[n, n]`` Gram matrices; ``H = I - 11^T/n``
the centring matrix; ``sigma`` the Gaussian bandwidth.

Bandwidth convention (median heuristic): ``sigma^2 = scale * median_{i<j} ||z_i - z_j||^2`` and
``K_ij = exp(-||z_i - z_j||^2 / (2 sigma^2))``.  With ``scale = 1`` this is Gretton's
``sigma = median distance`` (the median of squared distances is the square of the median distance).
The median is taken over a seeded subsample of at most ``median_max_points`` rows for large n.

Large n: ``tr(K H L H) = <K, L>_F - (2/n) (K1)^T (L1) + (1^T K 1)(1^T L 1) / n^2`` is accumulated over
row blocks ``K[i0:i1, :]`` (``[b, n]``), so no ``[n, n]`` matrix is ever built; sums are accumulated in
float64.  NOCCO uses explicit feature maps (exact eigen-features for small n, Nyström features of rank m
for large n; linear kernels are exact at any n).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "GaussianKernel",
    "LinearKernel",
    "Kernel",
    "median_sigma2",
    "gaussian_kernel_for",
    "gram_matrix",
    "centred_traces",
    "hsic",
    "hsic_cka",
    "hsic_nocco",
    "dependence",
    "hbar_functional",
    "HsicConfig",
    "TensorHsic",
    "HsicResult",
    "HsicAccumulator",
    "ESTIMATORS",
    "SCORE_MODES",
]

log = logging.getLogger(__name__)

ESTIMATORS = ("biased", "cka", "nocco")
SCORE_MODES = ("sensitivity", "f_out", "hsic_out_y")


@dataclass(frozen=True)
class GaussianKernel:
    """``k(a, b) = exp(-||a - b||^2 / (2 sigma2))``."""

    sigma2: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma2) and self.sigma2 > 0):
            raise ValueError(f"GaussianKernel.sigma2 must be finite and > 0, got {self.sigma2}")


@dataclass(frozen=True)
class LinearKernel:
    """``k(a, b) = a^T b``."""


Kernel = GaussianKernel | LinearKernel


def _as_tensor(Z: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype, what: str) -> torch.Tensor:
    t = torch.as_tensor(Z)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{what} must be [n, d], got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or Inf")
    return t


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def median_sigma2(
    Z: np.ndarray | torch.Tensor, *, scale: float = 1.0, max_points: int = 2048, seed: int = 0
) -> float:
    """Median-heuristic bandwidth ``sigma^2 = scale * median_{i<j} ||z_i - z_j||^2``.

    Args:
        Z: samples ``[n, d]``.
        scale: multiplier (``0.5`` gives the "half the median" convention).
        max_points: subsample size above which a seeded random subset of rows is used.
        seed: subsample seed.
    Returns the bandwidth; a degenerate sample (all rows equal) gives ``1.0`` with a warning.
    """
    Zt = torch.as_tensor(Z).to(torch.float64)
    if Zt.ndim == 1:
        Zt = Zt[:, None]
    n = Zt.shape[0]
    if n < 2:
        raise ValueError(f"median heuristic needs at least 2 samples, got n={n}")
    if n > max_points:
        g = torch.Generator().manual_seed(seed)
        Zt = Zt[torch.randperm(n, generator=g)[:max_points]]
    Zt = Zt - Zt.mean(0, keepdim=True)
    d2 = torch.cdist(Zt, Zt).pow(2)
    iu = torch.triu_indices(d2.shape[0], d2.shape[0], offset=1)
    med = float(d2[iu[0], iu[1]].median())
    if not med > 0:
        log.warning("median heuristic: all pairwise distances are zero; using sigma^2 = 1")
        return 1.0
    return scale * med


def gaussian_kernel_for(Z: np.ndarray | torch.Tensor, *, scale: float = 1.0, max_points: int = 2048,
                        seed: int = 0) -> GaussianKernel:
    """A Gaussian kernel with the median-heuristic bandwidth of ``Z``."""
    return GaussianKernel(median_sigma2(Z, scale=scale, max_points=max_points, seed=seed))


def _gram_block(Z: torch.Tensor, sqn: torch.Tensor, i0: int, i1: int, kernel: Kernel) -> torch.Tensor:
    """Rows ``i0:i1`` of the Gram matrix of centred ``Z`` ``[n, d]``: ``[i1-i0, n]``."""
    G = Z[i0:i1] @ Z.T
    if isinstance(kernel, LinearKernel):
        return G
    d2 = (sqn[i0:i1, None] + sqn[None, :] - 2.0 * G).clamp_min_(0.0)
    return torch.exp(d2 * (-0.5 / kernel.sigma2))


def gram_matrix(Z: np.ndarray | torch.Tensor, kernel: Kernel) -> np.ndarray:
    """Full Gram matrix ``[n, n]`` in float64 (small n only; for tests and diagnostics)."""
    Zt = _as_tensor(Z, torch.device("cpu"), torch.float64, "Z")
    Zt = Zt - Zt.mean(0, keepdim=True) if isinstance(kernel, GaussianKernel) else Zt
    return _gram_block(Zt, (Zt * Zt).sum(1), 0, Zt.shape[0], kernel).numpy()


def centred_traces(
    data: Sequence[np.ndarray | torch.Tensor],
    kernels: Sequence[Kernel],
    pairs: Sequence[tuple[int, int]],
    *,
    block_size: int = 2048,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[tuple[int, int], float]:
    """``tr(K_a H K_b H)`` for each requested pair, by row blocks (no ``[n, n]`` matrix).

    Args:
        data: ``m`` sample matrices ``[n, d_a]`` (same n; rows are paired samples).
        kernels: one kernel per matrix.
        pairs: index pairs ``(a, b)``; ``a == b`` gives ``||H K_a H||_F^2``.
        block_size: rows per block; peak memory ~ ``(#kernels + 1) * block_size * n`` elements.
        device: torch device (default: CUDA when available).
        dtype: dtype of the kernel blocks; sums are always accumulated in float64.
    Returns a dict pair -> trace (float).
    """
    if len(data) != len(kernels):
        raise ValueError(f"got {len(data)} data matrices but {len(kernels)} kernels")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    dev = _default_device(device)
    Zs = [_as_tensor(Z, dev, dtype, f"data[{i}]") for i, Z in enumerate(data)]
    n = Zs[0].shape[0]
    for i, Z in enumerate(Zs):
        if Z.shape[0] != n:
            raise ValueError(f"data[{i}] has {Z.shape[0]} rows, data[0] has {n}")
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples, got n={n}")
    for a, b in pairs:
        if not (0 <= a < len(Zs) and 0 <= b < len(Zs)):
            raise ValueError(f"pair {(a, b)} out of range for {len(Zs)} matrices")
    used = sorted({i for p in pairs for i in p})
    # Gaussian kernels are translation invariant: centre for numerical accuracy of the expansion.
    for i in used:
        if isinstance(kernels[i], GaussianKernel):
            Zs[i] = Zs[i] - Zs[i].mean(0, keepdim=True)
    sqn = {i: (Zs[i] * Zs[i]).sum(1) for i in used}
    rowsum = {i: torch.zeros(n, dtype=torch.float64, device=dev) for i in used}
    inner = {p: torch.zeros((), dtype=torch.float64, device=dev) for p in pairs}
    for i0 in range(0, n, block_size):
        i1 = min(n, i0 + block_size)
        blocks = {i: _gram_block(Zs[i], sqn[i], i0, i1, kernels[i]) for i in used}
        for i in used:
            rowsum[i][i0:i1] = blocks[i].sum(1, dtype=torch.float64)
        for a, b in pairs:
            inner[(a, b)] += (blocks[a] * blocks[b]).sum(dtype=torch.float64)
        del blocks
    out: dict[tuple[int, int], float] = {}
    for a, b in pairs:
        ra, rb = rowsum[a], rowsum[b]
        t = inner[(a, b)] - (2.0 / n) * (ra @ rb) + ra.sum() * rb.sum() / (n * n)
        out[(a, b)] = float(t)
    return out


def hsic(A, B, kernel_a: Kernel, kernel_b: Kernel, *, block_size: int = 2048, device=None) -> float:
    """Biased HSIC ``tr(K H L H) / (n-1)^2`` of paired samples ``A`` ``[n, da]``, ``B`` ``[n, db]``."""
    n = len(A)
    t = centred_traces([A, B], [kernel_a, kernel_b], [(0, 1)], block_size=block_size, device=device)
    return t[(0, 1)] / (n - 1) ** 2


def hsic_cka(A, B, kernel_a: Kernel, kernel_b: Kernel, *, block_size: int = 2048, device=None) -> float:
    """Normalised HSIC (CKA): ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` in ``[0, 1]``."""
    t = centred_traces([A, B], [kernel_a, kernel_b], [(0, 1), (0, 0), (1, 1)], block_size=block_size,
                       device=device)
    return _cka_from(t[(0, 1)], t[(0, 0)], t[(1, 1)])


def _cka_from(kl: float, kk: float, ll: float) -> float:
    den = math.sqrt(max(kk, 0.0) * max(ll, 0.0))
    return kl / den if den > 0 else 0.0


def _features(Z: torch.Tensor, kernel: Kernel, rank: int, seed: int) -> torch.Tensor:
    """Centred feature map ``Phi`` ``[n, m]`` with ``H K H ~= Phi Phi^T`` (float64, CPU/GPU of Z).

    Linear kernel: ``Phi = H Z`` (exact).  Gaussian, ``n <= rank``: eigen-features of ``H K H``
    (exact).  Gaussian, ``n > rank``: Nyström features on ``rank`` seeded landmarks, then centred.
    """
    n = Z.shape[0]
    if isinstance(kernel, LinearKernel):
        return Z - Z.mean(0, keepdim=True)
    Zc = Z - Z.mean(0, keepdim=True)
    sqn = (Zc * Zc).sum(1)
    if n <= rank:
        K = _gram_block(Zc, sqn, 0, n, kernel)
        Kc = K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()
        lam, U = torch.linalg.eigh((Kc + Kc.T) * 0.5)
        keep = lam > lam.max().clamp_min(0) * 1e-12
        return U[:, keep] * lam[keep].sqrt()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:rank].to(Z.device)
    Zl = Zc[idx]
    d2 = (sqn[:, None] + sqn[idx][None, :] - 2.0 * Zc @ Zl.T).clamp_min_(0.0)
    C = torch.exp(d2 * (-0.5 / kernel.sigma2))  # [n, m]
    W = C[idx]  # [m, m]
    lam, U = torch.linalg.eigh((W + W.T) * 0.5)
    keep = lam > lam.max() * 1e-10
    Phi = C @ (U[:, keep] / lam[keep].sqrt())  # [n, m'] : Phi Phi^T = C W^+ C^T
    return Phi - Phi.mean(0, keepdim=True)


def _nocco_from_features(Pa: torch.Tensor, Pb: torch.Tensor, eps: float) -> float:
    """``tr(R_a R_b)`` with ``R = Phi (Phi^T Phi + n eps I)^-1 Phi^T``."""
    n = Pa.shape[0]
    Ma = torch.linalg.inv(Pa.T @ Pa + n * eps * torch.eye(Pa.shape[1], dtype=Pa.dtype, device=Pa.device))
    Mb = torch.linalg.inv(Pb.T @ Pb + n * eps * torch.eye(Pb.shape[1], dtype=Pb.dtype, device=Pb.device))
    Cab = Pa.T @ Pb  # [ma, mb]
    return float(torch.trace(Ma @ Cab @ Mb @ Cab.T))


def hsic_nocco(A, B, kernel_a: Kernel, kernel_b: Kernel, *, eps: float = 1e-3, rank: int = 1024,
               seed: int = 0, device=None) -> float:
    """CCA-normalised dependence ``tr(R_K R_L)``, ``R = K~ (K~ + n eps I)^-1``, ``K~ = H K H``.

    Exact when ``n <= rank`` (or for linear kernels); Nyström rank-``rank`` approximation otherwise.
    """
    if not eps > 0:
        raise ValueError(f"nocco eps must be > 0, got {eps}")
    dev = _default_device(device)
    Za = _as_tensor(A, dev, torch.float64, "A")
    Zb = _as_tensor(B, dev, torch.float64, "B")
    if Za.shape[0] != Zb.shape[0]:
        raise ValueError(f"A has {Za.shape[0]} rows, B has {Zb.shape[0]}")
    return _nocco_from_features(_features(Za, kernel_a, rank, seed), _features(Zb, kernel_b, rank, seed), eps)


def dependence(A, B, kernel_a: Kernel, kernel_b: Kernel, *, estimator: str = "biased",
               block_size: int = 2048, eps: float = 1e-3, rank: int = 1024, seed: int = 0,
               device=None) -> float:
    """Dispatch to ``hsic`` / ``hsic_cka`` / ``hsic_nocco`` by ``estimator`` name."""
    if estimator == "biased":
        return hsic(A, B, kernel_a, kernel_b, block_size=block_size, device=device)
    if estimator == "cka":
        return hsic_cka(A, B, kernel_a, kernel_b, block_size=block_size, device=device)
    if estimator == "nocco":
        return hsic_nocco(A, B, kernel_a, kernel_b, eps=eps, rank=rank, seed=seed, device=device)
    raise ValueError(f"unknown HSIC estimator {estimator!r}; expected one of {ESTIMATORS}")


def hbar_functional(hsic_xz: float, hsic_zy: float, lambda_x: float = 1.0, lambda_y: float = 1.0) -> float:
    """HBaR ``F(Z) = -lambda_x HSIC(X, Z) + lambda_y HSIC(Z, Y)``."""
    return -lambda_x * hsic_xz + lambda_y * hsic_zy


# ------------------------------------------------------------------------------------------------
# Streaming accumulator
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HsicConfig:
    """Configuration of :class:`HsicAccumulator`.

    Attributes:
        lambda_x: weight of ``-HSIC(X, Z)`` in the HBaR functional (paper: 1).
        lambda_y: weight of ``+HSIC(Z, Y)`` (paper: 1).
        estimator: "biased" (paper, ``tr(KHLH)/(n-1)^2``), "cka" (normalised), "nocco"
            (CCA-normalised, the OFT path of the released code).
        score: "sensitivity" ``max(F(out) - F(in), 0)`` (released checkpoints), "f_out" ``F(out)``,
            "hsic_out_y" ``HSIC(out, Y)``.
        bandwidth_scale: ``sigma^2 = bandwidth_scale * median pairwise squared distance``.
        median_max_points: subsample size of the median heuristic.
        block_size: rows per Gram block (memory ~ 5 * block_size * n elements).
        device: torch device for the solve (None: CUDA when available, else CPU).
        compute_dtype: "float64" or "float32" for the kernel blocks (sums always float64).
        store_dtype: "float32" or "float16" for the stored pooled activations.
        project_dim: if set, pooled activations wider than this are multiplied by a seeded
            ``[d, project_dim]`` Gaussian matrix / sqrt(project_dim) (Johnson-Lindenstrauss; keeps
            distances, so the Gaussian kernel, approximately) to bound memory.
        nocco_eps: regulariser of the NOCCO estimator.
        nystrom_rank: Nyström rank (NOCCO) above which features are approximate.
        standardise_y: standardise each action dimension over all frames before the solve.
        seed: seed for subsampling, projections and landmarks.
    """

    lambda_x: float = 1.0
    lambda_y: float = 1.0
    estimator: str = "biased"
    score: str = "sensitivity"
    bandwidth_scale: float = 1.0
    median_max_points: int = 2048
    block_size: int = 2048
    device: str | None = None
    compute_dtype: str = "float64"
    store_dtype: str = "float32"
    project_dim: int | None = None
    nocco_eps: float = 1e-3
    nystrom_rank: int = 1024
    standardise_y: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"HsicConfig.estimator={self.estimator!r}; expected one of {ESTIMATORS}")
        if self.score not in SCORE_MODES:
            raise ValueError(f"HsicConfig.score={self.score!r}; expected one of {SCORE_MODES}")
        for name in ("lambda_x", "lambda_y"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"HsicConfig.{name} must be finite and >= 0, got {v}")
        if not self.bandwidth_scale > 0:
            raise ValueError(f"HsicConfig.bandwidth_scale must be > 0, got {self.bandwidth_scale}")
        for name in ("median_max_points", "block_size", "nystrom_rank"):
            if getattr(self, name) < 2:
                raise ValueError(f"HsicConfig.{name} must be >= 2, got {getattr(self, name)}")
        if self.compute_dtype not in ("float64", "float32"):
            raise ValueError(f"HsicConfig.compute_dtype={self.compute_dtype!r}; expected float64|float32")
        if self.store_dtype not in ("float32", "float16"):
            raise ValueError(f"HsicConfig.store_dtype={self.store_dtype!r}; expected float32|float16")
        if self.project_dim is not None and self.project_dim < 1:
            raise ValueError(f"HsicConfig.project_dim must be >= 1 or None, got {self.project_dim}")
        if not self.nocco_eps > 0:
            raise ValueError(f"HsicConfig.nocco_eps must be > 0, got {self.nocco_eps}")


@dataclass(frozen=True)
class TensorHsic:
    """Per-tensor terms: ``F(Z) = -lx HSIC(X, Z) + ly HSIC(Z, Y)`` for Z = pooled input / output."""

    hsic_x_in: float
    hsic_in_y: float
    hsic_x_out: float
    hsic_out_y: float
    f_in: float
    f_out: float
    score: float


@dataclass(frozen=True)
class HsicResult:
    """Output of :meth:`HsicAccumulator.solve`.

    Attributes:
        scores: tensor name -> score (the configured variant), the allocator's ``s_T``.
        terms: tensor name -> all HSIC terms.
        n: number of frames.
        config: the configuration used.
        sigma2: kernel bandwidths used (name -> sigma^2; "X" for the first-layer input).
    """

    scores: dict[str, float]
    terms: dict[str, TensorHsic]
    n: int
    config: HsicConfig
    sigma2: dict[str, float] = field(default_factory=dict)


class HsicAccumulator:
    """Streams token-pooled activations and action chunks, then scores every tensor.

    Usage::

        acc = HsicAccumulator(HsicConfig())
        for batch in frames:
            acc.add_batch(x=X_b, y=Y_b, acts={"blk.0.attn_q": (zin_b, zout_b), ...})
        result = acc.solve()   # result.scores["blk.0.attn_q"] -> s_T

    ``x`` ``[b, dx]``: pooled input of the first decoder layer; ``y`` ``[b, ...]``: the action chunk
    (flattened to ``[b, dy]``); ``acts[name] = (zin [b, d_in], zout [b, d_out])`` pooled input and
    output (``W x``) of each linear tensor.  Memory: all pooled vectors are kept
    (``n * sum(d_in + d_out)`` elements in ``store_dtype``); use ``project_dim`` for large models.
    Inputs shared by several tensors (q/k/v, gate/up) are scored once.
    """

    def __init__(self, config: HsicConfig | None = None) -> None:
        self.config = config or HsicConfig()
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._acts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._proj: dict[int, np.ndarray] = {}
        self._n = 0

    @property
    def n(self) -> int:
        """Frames accumulated so far."""
        return self._n

    def _store(self, a: np.ndarray | torch.Tensor, what: str, b: int) -> np.ndarray:
        arr = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float32)
        if arr.ndim == 1 and b == 1:
            arr = arr[None]
        arr = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr
        if arr.ndim != 2 or arr.shape[0] != b:
            raise ValueError(f"{what}: expected [{b}, d], got shape {tuple(np.shape(a))}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contains NaN or Inf (batch starting at frame {self._n})")
        pd = self.config.project_dim
        if pd is not None and arr.shape[1] > pd:
            d = arr.shape[1]
            if d not in self._proj:
                rng = np.random.default_rng(self.config.seed + d)
                self._proj[d] = (rng.standard_normal((d, pd)) / math.sqrt(pd)).astype(np.float32)
            arr = arr @ self._proj[d]
        return arr.astype(self.config.store_dtype, copy=False)

    def add_batch(self, x, y, acts: Mapping[str, tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]]) -> None:
        """Add ``b`` frames (see the class docstring for shapes).  Tensor names must stay the same."""
        b = int(np.shape(x)[0])
        if b < 1:
            raise ValueError("add_batch got an empty batch")
        if self._acts and set(acts) != set(self._acts):
            missing = sorted(set(self._acts) - set(acts))
            extra = sorted(set(acts) - set(self._acts))
            raise ValueError(f"tensor names changed between batches: missing {missing[:5]}, new {extra[:5]}")
        if not acts:
            raise ValueError("add_batch got no tensors in acts")
        xs = self._store(x, "x", b)
        y_arr = y.detach().float().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, np.float32)
        ys = y_arr.reshape(b, -1).astype(np.float32)  # actions: never projected
        if not np.isfinite(ys).all():
            raise ValueError(f"y contains NaN or Inf (batch starting at frame {self._n})")
        stored = {name: (self._store(zi, f"acts[{name!r}] input", b), self._store(zo, f"acts[{name!r}] output", b))
                  for name, (zi, zo) in acts.items()}
        self._x.append(xs)
        self._y.append(ys)
        for name, (zi, zo) in stored.items():
            li, lo = self._acts.setdefault(name, ([], []))
            li.append(zi)
            lo.append(zo)
        self._n += b

    def solve(self) -> HsicResult:
        """Compute every tensor's HSIC terms and score.  Raises on fewer than 2 frames."""
        cfg = self.config
        if self._n < 2:
            raise ValueError(f"HSIC needs at least 2 calibration frames, got {self._n}")
        dev = _default_device(cfg.device)
        dtype = torch.float64 if cfg.compute_dtype == "float64" else torch.float32
        X = torch.from_numpy(np.concatenate(self._x).astype(np.float32)).to(dev, dtype)
        Y = np.concatenate(self._y).astype(np.float64)
        if cfg.standardise_y:
            sd = Y.std(0)
            Y = (Y - Y.mean(0)) / np.where(sd > 0, sd, 1.0)
        Yt = torch.from_numpy(Y).to(dev, dtype)
        kx = gaussian_kernel_for(X, scale=cfg.bandwidth_scale, max_points=cfg.median_max_points, seed=cfg.seed)
        ky = LinearKernel()
        sigma2 = {"X": kx.sigma2}
        est = cfg.estimator
        # self-terms of X and Y (CKA) or their features (NOCCO) are shared by all tensors
        if est == "cka":
            t = centred_traces([X, Yt], [kx, ky], [(0, 0), (1, 1)], block_size=cfg.block_size, device=dev,
                               dtype=dtype)
            self_x, self_y = t[(0, 0)], t[(1, 1)]
        elif est == "nocco":
            phi_x = _features(X.to(torch.float64), kx, cfg.nystrom_rank, cfg.seed)
            phi_y = _features(Yt.to(torch.float64), ky, cfg.nystrom_rank, cfg.seed)

        def pair_terms(Z: torch.Tensor, kz: GaussianKernel) -> tuple[float, float]:
            """(dep(X, Z), dep(Z, Y)) under the configured estimator."""
            if est == "nocco":
                phi_z = _features(Z.to(torch.float64), kz, cfg.nystrom_rank, cfg.seed)
                return _nocco_from_features(phi_x, phi_z, cfg.nocco_eps), _nocco_from_features(phi_z, phi_y, cfg.nocco_eps)
            pairs = [(0, 2), (2, 1)] + ([(2, 2)] if est == "cka" else [])
            t = centred_traces([X, Yt, Z], [kx, ky, kz], pairs, block_size=cfg.block_size, device=dev, dtype=dtype)
            if est == "biased":
                s = (self._n - 1) ** 2
                return t[(0, 2)] / s, t[(2, 1)] / s
            return _cka_from(t[(0, 2)], self_x, t[(2, 2)]), _cka_from(t[(2, 1)], t[(2, 2)], self_y)

        # shared inputs (q/k/v, gate/up) are scored once: a cheap fingerprint (shape + strided rows),
        # confirmed by an exact comparison
        memo: dict[str, list[tuple[list[np.ndarray], tuple[float, float, float]]]] = {}

        def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
            return len(a) == len(b) and all(x is y or np.array_equal(x, y) for x, y in zip(a, b))

        def terms_of(parts: list[np.ndarray], label: str) -> tuple[float, float]:
            key = hashlib.sha1(b"".join(p[:: max(1, p.shape[0] // 8)].tobytes() for p in parts)).hexdigest()
            key += str([p.shape for p in parts[:1]]) + str(len(parts))
            hit = next((r for a, r in memo.get(key, []) if same(a, parts)), None)
            if hit is None:
                arr = np.concatenate(parts)
                Z = torch.from_numpy(arr.astype(np.float32, copy=False)).to(dev, dtype)
                del arr
                kz = gaussian_kernel_for(Z, scale=cfg.bandwidth_scale, max_points=cfg.median_max_points,
                                         seed=cfg.seed)
                hit = (*pair_terms(Z, kz), kz.sigma2)
                memo.setdefault(key, []).append((parts, hit))
            hx, hy, s2 = hit
            sigma2[label] = s2
            return hx, hy

        scores: dict[str, float] = {}
        terms: dict[str, TensorHsic] = {}
        for name, (zin, zout) in self._acts.items():
            hxi, hiy = terms_of(zin, f"{name}:in")
            hxo, hoy = terms_of(zout, f"{name}:out")
            f_in = hbar_functional(hxi, hiy, cfg.lambda_x, cfg.lambda_y)
            f_out = hbar_functional(hxo, hoy, cfg.lambda_x, cfg.lambda_y)
            if cfg.score == "sensitivity":
                s = max(f_out - f_in, 0.0)
            elif cfg.score == "f_out":
                s = f_out
            else:
                s = hoy
            scores[name] = s
            terms[name] = TensorHsic(hxi, hiy, hxo, hoy, f_in, f_out, s)
            log.debug("HSIC %s: F(in)=%.4g F(out)=%.4g score=%.4g", name, f_in, f_out, s)
        log.info("HSIC scored %d tensors over n=%d frames (%s, %s)", len(scores), self._n, est, cfg.score)
        return HsicResult(scores=scores, terms=terms, n=self._n, config=cfg, sigma2=sigma2)
