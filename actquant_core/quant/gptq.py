"""GPTQ on GGML's grids: second-order error compensation with GGML's own block quantizers.

Reference: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", arXiv 2210.17323 (Algorithm 1: Cholesky form of the inverse
Hessian, lazy batch updates).  Baseline of ActQuant (Akbari et al., arXiv 2605.24011).

Notation (a linear weight ``W`` ``[rows, cols]`` = ``[out_features, in_features]``, GGML rows; the
calibration inputs ``X`` ``[n, cols]``, one row per token):

* ``H = 2 XᵀX / n`` ``[cols, cols]``; dead columns (``H_cc = 0``) get ``H_cc = 1``; damping
  ``H += percdamp · mean(diag H) · I``;
* ``U`` = the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``).

GGML blocks run along a row, and a block's scales are chosen jointly from all of its weights, so the
quantization step is a whole *column block* ``S`` of the type's block size (256 for K / IQ quants, 32 for
Q8_0 / Q4_0 ...) instead of GPTQ's single column: the current (error-updated) ``W[:, S]`` of every row is
quantized by ``actquant_core.native.quantize`` (imatrix-style importance ``diag(XᵀX)/n`` as GGML's quant
weights), dequantized to ``Q_S``, and the block's error is propagated with the exact OBS update for
fixing ``S`` at ``Q_S``::

    E_S = (W_S - Q_S) · U_SS⁻¹              (triangular solve; rows of E are per output row)
    W_R -= E_S · U_{S,R}                     (R = the columns after S)

which is what GPTQ's column-by-column recursion gives when the quantized values of ``S`` are fixed.
The update is exact for *any* choice of ``Q_S``, and fixing ``S`` raises the layer's output error by
``‖E_S‖²`` (per row), so ``Q_S`` may come from several GGML quantizations of the block and each row keeps
the one with the smaller ``‖E_S‖²`` (GGML quantizes rows independently): (1) the block as it is, and
(2) the block after GPTQ's own recursion inside it, ``intra_group`` columns at a time (each group snapped
to its values in GGML's quantization of the current block, its error propagated to the later groups
through ``U_SS``), then quantized jointly.  (2) recovers most of GPTQ's gain from correlations inside a
256-block (output error on low-rank correlated inputs relative to imatrix's: ~0.5 with (1) only, ~0.2 with both).
Updates inside a lazy batch (``lazy_block`` columns, a multiple of the type block) are applied at once
per block; the rest of ``W`` is updated once per lazy batch (GPTQ's lazy batch).  Act-order is off.
Cost: ``2 + bs / intra_group`` GGML quantizations of each block instead of one.

GGML quantizes every block of a row independently of the others, so the tensor's bytes are the per-block
bytes concatenated row by row, and they equal ``native.quantize`` of the final updated weight
(:attr:`GptqResult.weight`); ``test_quant_gptq`` checks both.  With ``H ∝ I`` nothing propagates and the
result is bit-exactly ``native.quantize(W)``.

Statistics: :class:`GramAccumulator` streams ``XᵀX`` per hooked layer during calibration (float64 sums,
``cols²·8`` bytes per tensor; tensors wider than ``GptqConfig.max_cols`` are not collected and fall back
to imatrix quantization, see :func:`gptq_eligible`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .types import HIGH_PRECISION_TYPES, type_block

__all__ = [
    "GptqConfig",
    "GptqError",
    "GptqFactor",
    "GptqResult",
    "GramStats",
    "GramAccumulator",
    "gptq_eligible",
    "gptq_factor",
    "hessian_from_gram",
    "gptq_quantize",
    "gptq_tensors",
]

log = logging.getLogger(__name__)

QuantizeFn = Callable[[np.ndarray, str, np.ndarray | None], bytes]
DequantizeFn = Callable[[bytes, str, tuple[int, int]], np.ndarray]


class GptqError(ValueError):
    """GPTQ cannot run on this tensor (non-finite statistics, Hessian not positive definite, ...)."""


@dataclass(frozen=True)
class GptqConfig:
    """GPTQ settings.

    Attributes:
        percdamp: damping ``λ = percdamp · mean(diag H)`` added to the diagonal (paper: 0.01).
        lazy_block: columns per lazy-batch update (rounded up to a multiple of the type's block size).
        max_cols: tensors whose row length (input features) exceeds this get no Gram statistics
            (memory ``cols²·8`` bytes each) and fall back to imatrix quantization, logged.
        device: torch device of the solve ("cpu", "cuda", ...).
        intra_group: columns per step of the recursion inside a type block (candidate 2 of
            :func:`_block_candidates`; 0 = off, plain block-wise GPTQ); ignored when it does not divide
            the block size or is not smaller than it (e.g. Q8_0's 32-blocks).
        intra_max_cols: the recursion inside blocks runs only for tensors of at most this many columns
            (``None``: every tensor). It costs ``2 + block / intra_group`` GGML quantizations per block instead
            of one, and it pays where a row has few blocks to carry GPTQ's error forward: on the small
            presets (rows of 1-3 blocks) stage 2 "best" with it has 2-4x lower action error on π₀.₅ and
            1.1-1.4x on OFT than without (``bench/results/quant_table_*_dart_g0.json`` vs ``..._dart.json``).
            Real-size matrices (2048+ columns, 8+ blocks) skip it: that run took 10 min on one H100.
    """

    percdamp: float = 0.01
    lazy_block: int = 128
    max_cols: int = 8192
    device: str = "cpu"
    intra_group: int = 16
    intra_max_cols: int | None = 1024

    def __post_init__(self) -> None:
        if not (math.isfinite(self.percdamp) and self.percdamp >= 0):
            raise ValueError(f"GptqConfig.percdamp must be finite and >= 0, got {self.percdamp!r}")
        if self.lazy_block < 1:
            raise ValueError(f"GptqConfig.lazy_block must be >= 1, got {self.lazy_block!r}")
        if self.max_cols < 1:
            raise ValueError(f"GptqConfig.max_cols must be >= 1, got {self.max_cols!r}")
        if self.intra_group < 0:
            raise ValueError(f"GptqConfig.intra_group must be >= 0 (0 = off), got {self.intra_group!r}")
        if self.intra_max_cols is not None and self.intra_max_cols < 1:
            raise ValueError(f"GptqConfig.intra_max_cols must be >= 1 or None, got {self.intra_max_cols!r}")


@dataclass(frozen=True)
class GramStats:
    """``G = Σ xxᵀ`` ``[cols, cols]`` (float64) over ``n`` input rows of one linear layer."""

    gram: np.ndarray
    n: int


class GramAccumulator:
    """Streams ``XᵀX`` per tensor: ``add_batch(name, x [..., cols])``; ``solve() -> {name: GramStats}``.

    Sums are float64 on the device of the first batch (GPU when calibrating on one).  A tensor wider
    than ``max_cols`` is refused with a ``ValueError`` (the pipeline never asks for one, see
    :func:`gptq_eligible`).
    """

    def __init__(self, max_cols: int = GptqConfig.max_cols) -> None:
        self.max_cols = int(max_cols)
        self._sum: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}

    def add_batch(self, name: str, x: torch.Tensor | np.ndarray) -> None:
        t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        if t.ndim == 0:
            raise ValueError(f"{name}: activation must be [..., cols], got a scalar")
        t = t.reshape(-1, t.shape[-1]).to(torch.float64)
        cols = t.shape[1]
        if cols > self.max_cols:
            raise ValueError(f"{name}: {cols} input columns exceed the Gram limit max_cols={self.max_cols}")
        if t.shape[0] == 0:
            raise ValueError(f"{name}: empty activation batch")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: activation contains NaN or Inf")
        if name in self._sum:
            if self._sum[name].shape[0] != cols:
                raise ValueError(f"{name}: column count changed from {self._sum[name].shape[0]} to {cols}")
            t = t.to(self._sum[name].device)
            self._sum[name] += t.T @ t
            self._count[name] += t.shape[0]
        else:
            self._sum[name] = t.T @ t
            self._count[name] = t.shape[0]

    def solve(self) -> dict[str, GramStats]:
        if not self._sum:
            raise ValueError("GramAccumulator.solve: no activation was added")
        return {n: GramStats(g.cpu().numpy(), self._count[n]) for n, g in self._sum.items()}


def gptq_eligible(ggml_type: str, shape: tuple[int, ...], config: GptqConfig) -> str | None:
    """``None`` when GPTQ applies to a tensor of ``shape`` stored as ``ggml_type``, else why not."""
    if ggml_type in HIGH_PRECISION_TYPES:
        return f"{ggml_type} is not quantized"
    if len(shape) != 2:
        return f"shape {tuple(shape)} is not a 2-D linear weight"
    bs, _ = type_block(ggml_type)
    if shape[1] % bs:
        return f"row length {shape[1]} is not a multiple of {ggml_type}'s block size {bs}"
    if shape[1] > config.max_cols:
        return f"row length {shape[1]} exceeds gptq max_cols={config.max_cols} (Gram memory bound)"
    return None


def hessian_from_gram(stats: GramStats) -> np.ndarray:
    """``H = 2 G / n`` ``[cols, cols]`` float64."""
    if stats.n < 1:
        raise GptqError(f"Gram statistics over n={stats.n} rows")
    return 2.0 * np.asarray(stats.gram, np.float64) / float(stats.n)


@dataclass(frozen=True)
class GptqFactor:
    """What :func:`gptq_quantize` derives from a tensor's Hessian alone, reusable across GGML types.

    Attributes:
        U: upper Cholesky factor of the damped ``H⁻¹`` ``[cols, cols]`` float64 (torch, on the solve device).
        damp: the damping added to the diagonal.
        dead_columns: columns with ``H_cc = 0``.
    """

    U: torch.Tensor
    damp: float
    dead_columns: int


def gptq_factor(H: np.ndarray, config: GptqConfig | None = None, name: str = "tensor") -> GptqFactor:
    """Symmetrise ``H`` ``[cols, cols]``, set dead columns' diagonal to 1, damp, and factor the inverse
    (``H⁻¹ = UᵀU``) on ``config.device``.  Raises ``GptqError`` for a non-finite or non-square ``H`` or one that is
    not positive definite after damping."""
    cfg = config or GptqConfig()
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise GptqError(f"{name}: Hessian must be square, got shape {H.shape}")
    if not np.isfinite(H).all():
        raise GptqError(f"{name}: Hessian contains NaN or Inf")
    cols = H.shape[0]
    Ht = torch.from_numpy(H.copy()).to(torch.device(cfg.device))
    Ht = 0.5 * (Ht + Ht.T)
    diag = torch.diagonal(Ht)
    dead = diag == 0
    n_dead = int(dead.sum())
    diag[dead] = 1.0
    damp = cfg.percdamp * float(diag.mean())
    diag += damp
    L, info = torch.linalg.cholesky_ex(Ht)
    if int(info) != 0:
        raise GptqError(f"{name}: Hessian is not positive definite after damping percdamp={cfg.percdamp} "
                        f"(leading minor {int(info)} of {cols}); raise the damping or check the calibration inputs")
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0 or not bool(torch.isfinite(U).all()):
        raise GptqError(f"{name}: the inverse Hessian is not positive definite (ill-conditioned H, "
                        f"percdamp={cfg.percdamp}); raise the damping")
    return GptqFactor(U=U, damp=damp, dead_columns=n_dead)


@dataclass(frozen=True)
class GptqResult:
    """Output of :func:`gptq_quantize`.

    Attributes:
        data: GGML bytes of the tensor (``rows * row_size``), = ``native.quantize(weight, type, importance)``.
        weight: the final error-updated weight ``[rows, cols]`` float32 that GGML quantized.
        loss: GPTQ's objective proxy ``Σ E²`` (sum over the OBS-scaled errors of every block).
        damp: the damping added to the diagonal.
        dead_columns: columns with ``H_cc = 0`` (no calibration signal).
    """

    data: bytes
    weight: np.ndarray
    loss: float
    damp: float
    dead_columns: int


def _importance_slice(importance: np.ndarray | None, j1: int, j2: int) -> np.ndarray | None:
    if importance is None:
        return None
    return np.ascontiguousarray(importance[..., j1:j2])


def _block_candidates(W_S: torch.Tensor, U_SS: torch.Tensor, ggml_type: str, imp_S: np.ndarray | None, groups: int,
                      quantize: QuantizeFn, dequantize: DequantizeFn):
    """GGML inputs ``[rows, bs]`` float32 to try for one column block (see the module docstring).

    1. the block itself (plain block-wise GPTQ);
    2. with ``groups > 1`` and columns coupled inside the block (``U_SS`` not diagonal): the block after
       GPTQ's recursion *inside* it, group by group -- group ``g`` is snapped to its values in GGML's
       quantization of the current candidate and its error is propagated to the block's later groups
       (``U_SS``); GGML then quantizes the result jointly.  (Keeping the group's own values instead, as
       GPTQ's "updated weight" does, measured worse: GGML re-chooses the scales from them.)  Without
       coupling nothing would be propagated, so the block is quantized as it is (with ``H ∝ I`` the
       result is bit-exactly GGML's quantization of ``W``).
    """
    yield np.ascontiguousarray(W_S.cpu().numpy().astype(np.float32))
    if groups <= 1 or not bool(torch.triu(U_SS, diagonal=1).any()):
        return
    rows, bs = W_S.shape
    g = bs // groups
    Wc = W_S.clone()
    for k in range(groups - 1):
        a, b = k * g, (k + 1) * g
        X = np.ascontiguousarray(Wc.cpu().numpy().astype(np.float32))
        Q = torch.from_numpy(dequantize(quantize(X, ggml_type, imp_S), ggml_type, (rows, bs))[:, a:b].astype(np.float64))
        e = torch.linalg.solve_triangular(U_SS[a:b, a:b], Wc[:, a:b] - Q.to(Wc.device), upper=True, left=False)
        Wc[:, a:b] = Q.to(Wc.device)
        Wc[:, b:] -= e @ U_SS[a:b, b:]
    yield np.ascontiguousarray(Wc.cpu().numpy().astype(np.float32))


def gptq_quantize(
    W: np.ndarray,
    ggml_type: str,
    H: np.ndarray,
    importance: np.ndarray | None = None,
    *,
    config: GptqConfig | None = None,
    quantize: QuantizeFn | None = None,
    dequantize: DequantizeFn | None = None,
    name: str = "tensor",
    factor: GptqFactor | None = None,
) -> GptqResult:
    """GPTQ of ``W`` ``[rows, cols]`` as ``ggml_type`` under Hessian ``H`` ``[cols, cols]`` (see module doc).

    Args:
        W: float weight ``[rows, cols]`` (not modified).
        ggml_type: a quantized GGML type whose block size divides ``cols``.
        H: the layer Hessian ``2 XᵀX / n`` (:func:`hessian_from_gram`).
        importance: GGML quant weights ``[cols]`` or ``[rows, cols]`` (None: GGML's unweighted search).
        config: :class:`GptqConfig`.
        quantize / dequantize: GGML codecs (default ``actquant_core.native.quantize`` / ``dequantize``).
        name: tensor name for messages.
        factor: :func:`gptq_factor` of ``H`` with this ``config``, computed once for several types of one
            tensor (None: computed here).
    Raises ``GptqError`` (a ``ValueError``) for non-finite ``W``/``H``/importance, a shape mismatch, a
    row length that is not a multiple of the block size, an unquantized type, or an ``H`` that is not
    positive definite after damping.
    """
    cfg = config or GptqConfig()
    if quantize is None or dequantize is None:
        from actquant_core import native

        quantize = quantize or native.quantize
        dequantize = dequantize or native.dequantize
    W = np.asarray(W, dtype=np.float32)
    if W.ndim != 2:
        raise GptqError(f"{name}: GPTQ needs a 2-D weight [rows, cols], got shape {W.shape}")
    rows, cols = W.shape
    if ggml_type in HIGH_PRECISION_TYPES:
        raise GptqError(f"{name}: {ggml_type} is not a quantized type")
    bs, _ = type_block(ggml_type)
    if cols % bs:
        raise GptqError(f"{name}: row length {cols} is not a multiple of {ggml_type}'s block size {bs}")
    if not np.isfinite(W).all():
        raise GptqError(f"{name}: weight contains NaN or Inf")
    if importance is not None:
        importance = np.asarray(importance, dtype=np.float32)
        if importance.shape not in ((cols,), (rows, cols)):
            raise GptqError(f"{name}: importance shape {importance.shape}; expected ({cols},) or ({rows}, {cols})")
        if not np.isfinite(importance).all():
            raise GptqError(f"{name}: importance contains NaN or Inf")
    if factor is None:
        if np.shape(H) != (cols, cols):
            raise GptqError(f"{name}: Hessian shape {np.shape(H)} does not match {cols} weight columns")
        factor = gptq_factor(H, cfg, name)
    elif tuple(factor.U.shape) != (cols, cols):
        raise GptqError(f"{name}: factor shape {tuple(factor.U.shape)} does not match {cols} weight columns")
    dev = torch.device(cfg.device)
    U, damp, n_dead = factor.U.to(dev), factor.damp, factor.dead_columns

    Wt = torch.from_numpy(W.copy()).to(dev, torch.float64)  # [rows, cols], updated in place
    final = np.empty_like(W)
    blocks: list[np.ndarray] = []  # per type block: [rows, bytes per row of the block]
    lazy = max(bs, math.ceil(cfg.lazy_block / bs) * bs)
    recurse = bool(cfg.intra_group) and (cfg.intra_max_cols is None or cols <= cfg.intra_max_cols)
    groups = bs // cfg.intra_group if recurse and bs > cfg.intra_group and bs % cfg.intra_group == 0 else 1
    loss = 0.0
    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        E = torch.zeros(rows, i2 - i1, dtype=torch.float64, device=dev)  # [rows, lazy] OBS-scaled errors
        for j1 in range(i1, i2, bs):
            j2 = j1 + bs
            U_SS = U[j1:j2, j1:j2]
            W_S = Wt[:, j1:j2]  # [rows, bs] current (error-updated) block
            imp_S = _importance_slice(importance, j1, j2)
            best = None  # (per-row OBS loss [rows], GGML input [rows, bs] f32, bytes [rows, nb], E [rows, bs])
            for X_S in _block_candidates(W_S, U_SS, ggml_type, imp_S, groups, quantize, dequantize):
                raw = quantize(X_S, ggml_type, imp_S)
                Q_S = torch.from_numpy(dequantize(raw, ggml_type, (rows, bs)).astype(np.float64)).to(dev)
                Eb = torch.linalg.solve_triangular(U_SS, W_S - Q_S, upper=True, left=False)  # Eb U_SS = W_S - Q_S
                row_loss = torch.square(Eb).sum(1)
                cand = (row_loss, X_S, np.frombuffer(raw, np.uint8).reshape(rows, -1), Eb)
                if best is None:
                    best = cand
                else:  # rows are quantized independently: keep each row's better candidate
                    take = (row_loss < best[0]).cpu().numpy()
                    take_t = torch.from_numpy(take).to(dev)
                    best = (torch.where(take_t, row_loss, best[0]), np.where(take[:, None], X_S, best[1]),
                            np.where(take[:, None], cand[2], best[2]), torch.where(take_t[:, None], Eb, best[3]))
            row_loss, X_S, raw_rows, Eb = best
            final[:, j1:j2] = X_S
            blocks.append(raw_rows)
            E[:, j1 - i1 : j2 - i1] = Eb
            loss += float(row_loss.sum())
            if j2 < i2:
                Wt[:, j2:i2] -= Eb @ U[j1:j2, j2:i2]
        if i2 < cols:
            Wt[:, i2:] -= E @ U[i1:i2, i2:]
    if not np.isfinite(final).all():
        raise GptqError(f"{name}: the error-updated weight became non-finite (ill-conditioned H)")
    data = np.ascontiguousarray(np.concatenate(blocks, axis=1)).tobytes()
    if n_dead:
        log.info("%s: %d of %d input columns had no calibration signal (H_cc = 0)", name, n_dead, cols)
    return GptqResult(data=data, weight=final, loss=loss, damp=damp, dead_columns=n_dead)


def gptq_tensors(
    weights: Mapping[str, np.ndarray],
    types: Mapping[str, str],
    grams: Mapping[str, GramStats],
    importance: Mapping[str, np.ndarray],
    config: GptqConfig,
    quantize: QuantizeFn,
    dequantize: DequantizeFn,
    factors: dict[str, GptqFactor] | None = None,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """GPTQ of every tensor in ``types`` (name -> GGML type); a tensor GPTQ cannot handle falls back to
    ``quantize(W, type, importance)`` (imatrix), logged.  ``factors`` (name -> :func:`gptq_factor`), when given,
    is read and filled: a caller quantizing one tensor at several types factors its Hessian once.  Returns
    (name -> bytes, name -> "gptq" or the fallback reason)."""
    out: dict[str, bytes] = {}
    status: dict[str, str] = {}
    for name, t in types.items():
        W = np.asarray(weights[name], np.float32)
        W = W.reshape(-1, W.shape[-1])
        imp = importance.get(name)
        try:
            if name not in grams:
                raise GptqError(f"{name}: no Gram statistics were collected")
            factor = (factors or {}).get(name) or gptq_factor(hessian_from_gram(grams[name]), config, name)
            if factors is not None:
                factors[name] = factor
            res = gptq_quantize(W, t, None, imp, config=config, quantize=quantize, dequantize=dequantize, name=name,
                                factor=factor)
            out[name], status[name] = res.data, "gptq"
        except GptqError as e:
            log.warning("GPTQ fallback to imatrix quantization: %s", e)
            out[name], status[name] = quantize(W, t, imp), f"imatrix fallback: {e}"
    return out, status
