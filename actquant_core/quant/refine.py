"""Stage-2 refinement: re-search Q4_K / Q2_K block scales and mins against the Fisher-weighted error.

Reference: Akbari et al., "ActQuant", arXiv 2605.24011, stage 2 (Action-Mixed Fisher as the importance
of GGML's block quantizers).  GGML's own search (``make_qkx2/3_quants``) tries a fixed set of inverse
scales per sub-block with the super-block scale ``d`` / ``dmin`` chosen once from the sub-block maxima.
Here, starting from GGML's bytes, we alternate

  1. per sub-block, an integer search over (scale, min) codes in a window around the current ones (for
     several rescalings ``f`` of ``d``), each with the error-optimal codes ``q = clip(rint((x + mn)/s))``;
  2. a weighted least-squares refit of the super-block ``(d, dmin)`` for fixed codes, rounded to fp16,

and keep, block by block, whichever of the input and the candidates has the lowest
``E = sum_i w_i (x_i - x^_i)^2`` as decoded by gguf-py's own dequantizer — so the output is never worse
than the input on E and always decodes with ``gguf.quants.dequantize``.

Block layouts (QK_K = 256 weights; from gguf-py ``gguf/quants.py`` dequantizers, GGML ``block_q4_K`` /
``block_q2_K``):

  Q4_K, 144 bytes: d f16 | dmin f16 | scales[12] | qs[128]
      8 sub-blocks of 32; x^ = d*sc_j*q - dmin*m_j, sc_j, m_j in [0, 63], q in [0, 15].
      scales: bytes 0-3 = sc[0:4] | (sc[4:8] >> 4) << 6;  bytes 4-7 = m[0:4] | (m[4:8] >> 4) << 6;
              bytes 8-11 = (sc[4:8] & 15) | (m[4:8] & 15) << 4.
      qs: element e = 64 g + 32 h + k (g < 4, h < 2, k < 32) is nibble h of byte 32 g + k.
  Q2_K, 84 bytes: scales[16] | qs[64] | d f16 | dmin f16
      16 sub-blocks of 16; x^ = d*sc_j*q - dmin*m_j, sc_j, m_j in [0, 15], q in [0, 3].
      scales[j] = sc_j | m_j << 4.
      qs: element e = 128 g + 32 s + k (g < 2, s < 4, k < 32) is bits 2s..2s+1 of byte 32 g + k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

__all__ = [
    "RefineConfig",
    "RefineResult",
    "BlockParams",
    "unpack_blocks",
    "pack_blocks",
    "refine_tensor",
    "weighted_block_error",
    "SUPPORTED",
]

log = logging.getLogger(__name__)

QK_K = 256


@dataclass(frozen=True)
class _Layout:
    block_bytes: int
    n_sub: int  # sub-blocks per super-block
    sc_max: int  # max scale / min code
    q_max: int


_LAYOUTS = {"Q4_K": _Layout(144, 8, 63, 15), "Q2_K": _Layout(84, 16, 15, 3)}
SUPPORTED = tuple(_LAYOUTS)


@dataclass
class BlockParams:
    """Unpacked super-blocks (``nb`` of them).

    Attributes:
        d, dmin: ``[nb]`` float16 super-block scale and min scale.
        sc, m: ``[nb, n_sub]`` uint8 sub-block scale / min codes.
        q: ``[nb, 256]`` uint8 codes in natural element order.
    """

    d: np.ndarray
    dmin: np.ndarray
    sc: np.ndarray
    m: np.ndarray
    q: np.ndarray


@dataclass(frozen=True)
class RefineConfig:
    """Search settings.

    Attributes:
        iterations: rounds of (sub-block search, (d, dmin) refit).
        window: integer half-width of the (scale, min) code search around the current codes.
        d_factors: rescalings of the super-block ``d`` / ``dmin`` tried each round.
        device: torch device of the search (None: CUDA when available, else CPU).
    """

    iterations: int = 2
    window: int = 2
    d_factors: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
    device: str | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"RefineConfig.iterations must be >= 1, got {self.iterations}")
        if self.window < 0:
            raise ValueError(f"RefineConfig.window must be >= 0, got {self.window}")
        if not self.d_factors or any(not (f > 0) for f in self.d_factors):
            raise ValueError(f"RefineConfig.d_factors must be non-empty and positive, got {self.d_factors}")


@dataclass(frozen=True)
class RefineResult:
    """Refined bytes and the weighted error before / after (as decoded by gguf-py)."""

    data: bytes
    error_before: float
    error_after: float
    blocks_improved: int
    n_blocks: int


def _layout(type_name: str) -> _Layout:
    if type_name not in _LAYOUTS:
        raise ValueError(f"refinement supports {SUPPORTED}, got {type_name!r}")
    return _LAYOUTS[type_name]


def unpack_blocks(data: bytes | np.ndarray, type_name: str) -> BlockParams:
    """Split GGML bytes of ``type_name`` into :class:`BlockParams`."""
    L = _layout(type_name)
    raw = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if raw.size % L.block_bytes:
        raise ValueError(f"{type_name}: {raw.size} bytes is not a whole number of {L.block_bytes}-byte blocks")
    b = raw.reshape(-1, L.block_bytes)
    nb = b.shape[0]
    if type_name == "Q4_K":
        d = b[:, 0:2].copy().view(np.float16).reshape(nb)
        dmin = b[:, 2:4].copy().view(np.float16).reshape(nb)
        s = b[:, 4:16].astype(np.uint8)
        lo, mi, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
        sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=1)
        m = np.concatenate([mi & 63, (hi >> 4) | ((mi >> 6) << 4)], axis=1)
        qs = b[:, 16:144].reshape(nb, 4, 1, 32)
        q = ((qs >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 15).reshape(nb, QK_K)
    else:
        s = b[:, 0:16]
        sc, m = s & 15, s >> 4
        qs = b[:, 16:80].reshape(nb, 2, 1, 32)
        q = ((qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(nb, QK_K)
        d = b[:, 80:82].copy().view(np.float16).reshape(nb)
        dmin = b[:, 82:84].copy().view(np.float16).reshape(nb)
    return BlockParams(d=d, dmin=dmin, sc=sc.astype(np.uint8), m=m.astype(np.uint8), q=q.astype(np.uint8))


def pack_blocks(p: BlockParams, type_name: str) -> bytes:
    """Inverse of :func:`unpack_blocks`."""
    L = _layout(type_name)
    nb = p.q.shape[0]
    sc, m, q = p.sc.astype(np.uint8), p.m.astype(np.uint8), p.q.astype(np.uint8)
    if sc.max(initial=0) > L.sc_max or m.max(initial=0) > L.sc_max or q.max(initial=0) > L.q_max:
        raise ValueError(f"{type_name}: code out of range (sc<={L.sc_max}, m<={L.sc_max}, q<={L.q_max})")
    out = np.zeros((nb, L.block_bytes), np.uint8)
    d = p.d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    dmin = p.dmin.astype(np.float16).reshape(nb, 1).view(np.uint8)
    if type_name == "Q4_K":
        out[:, 0:2], out[:, 2:4] = d, dmin
        out[:, 4:8] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
        out[:, 8:12] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
        out[:, 12:16] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
        qq = q.reshape(nb, 4, 2, 32)
        out[:, 16:144] = (qq[:, :, 0, :] | (qq[:, :, 1, :] << 4)).reshape(nb, 128)
    else:
        out[:, 0:16] = sc | (m << 4)
        qq = q.reshape(nb, 2, 4, 32)
        out[:, 16:80] = (qq[:, :, 0] | (qq[:, :, 1] << 2) | (qq[:, :, 2] << 4) | (qq[:, :, 3] << 6)).reshape(nb, 64)
        out[:, 80:82], out[:, 82:84] = d, dmin
    return out.tobytes()


def weighted_block_error(data: bytes, type_name: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per super-block ``sum w (x - deq)^2`` with gguf-py's dequantizer; ``x``, ``w`` ``[nb, 256]``."""
    qt = GGMLQuantizationType[type_name]
    raw = np.frombuffer(bytes(data), np.uint8).reshape(x.shape[0], -1)
    deq = gguf_dequantize(raw, qt).reshape(x.shape).astype(np.float64)
    return (w * np.square(x - deq)).sum(1)


_F16_MAX = 65504.0


def _to_f16(v: torch.Tensor) -> torch.Tensor:
    """Round float32 values to fp16 (clamped to the finite range) and back to float32."""
    return torch.nan_to_num(v).clamp(-_F16_MAX, _F16_MAX).half().float()


def _decode(D, M, sc, m, q, L: _Layout) -> torch.Tensor:
    """x^ ``[nb, ns, sl]`` float32 with gguf-py's operation order: ``(d * sc) * q - (dmin * m)``."""
    dd = D[:, None] * sc.float()
    dm = M[:, None] * m.float()
    return dd[..., None] * q.float() - dm[..., None]


def _block_error(x64, w64, xhat) -> torch.Tensor:
    """Per super-block ``sum w (x - x^)^2`` in float64: ``[nb]``."""
    return (w64 * (x64 - xhat.double()).square()).flatten(1).sum(1)


def _search_codes(x, w, D, M, sc_c, m_c, L: _Layout, window: int):
    """Best (sc, m, q) per sub-block for fixed super scales.

    x, w: ``[nb, ns, sl]`` float32; D, M: ``[nb]`` float32; sc_c, m_c: ``[nb, ns]`` int64 centres.
    Returns int64 sc, m ``[nb, ns]`` and float32 q ``[nb, ns, sl]``.
    """
    best_err = torch.full(sc_c.shape, float("inf"), dtype=torch.float32, device=x.device)
    best_sc, best_m = sc_c.clone(), m_c.clone()
    best_q = torch.zeros_like(x)
    Dc, Mc = D[:, None, None], M[:, None, None]
    for a in range(-window, window + 1):
        sc = (sc_c + a).clamp(0, L.sc_max)
        s = Dc * sc[..., None].float()
        for b in range(-window, window + 1):
            m = (m_c + b).clamp(0, L.sc_max)
            mn = Mc * m[..., None].float()
            q = torch.where(s != 0, torch.round((x + mn) / s), torch.zeros_like(x))
            q = torch.nan_to_num(q).clamp(0, L.q_max)
            err = (w * (x - (s * q - mn)).square()).sum(-1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_sc = torch.where(better, sc, best_sc)
            best_m = torch.where(better, m, best_m)
            best_q = torch.where(better[..., None], q, best_q)
    return best_sc, best_m, best_q


def _refit_dm(x, w, sc, m, q, D, M):
    """Weighted LS for (d, dmin) with fixed codes: ``x ~ d*(sc q) - dmin*m``; fp16-rounded float32."""
    a = sc[..., None].double() * q.double()
    b = -m[..., None].double().expand_as(a)
    xd, wd = x.double(), w.double()
    Saa, Sab, Sbb = (wd * a * a).sum((1, 2)), (wd * a * b).sum((1, 2)), (wd * b * b).sum((1, 2))
    Sax, Sbx = (wd * a * xd).sum((1, 2)), (wd * b * xd).sum((1, 2))
    det = Saa * Sbb - Sab * Sab
    ok = det.abs() > 1e-12 * (Saa * Sbb).clamp_min(1e-300)
    safe = torch.where(ok, det, torch.ones_like(det))
    Dn = torch.where(ok, (Sax * Sbb - Sbx * Sab) / safe, D.double())
    Mn = torch.where(ok, (Saa * Sbx - Sab * Sax) / safe, M.double())
    return _to_f16(Dn.float()), _to_f16(Mn.float())


def refine_tensor(data: bytes, type_name: str, W: np.ndarray, weights: np.ndarray,
                  config: RefineConfig | None = None) -> RefineResult:
    """Refine GGML bytes of ``W`` ``[rows, cols]`` (cols % 256 == 0) against ``weights`` ``[rows, cols]``.

    Args:
        data: GGML bytes of ``W`` as ``type_name`` ("Q4_K" or "Q2_K"), e.g. from ``native.quantize``.
        type_name: the type of ``data``.
        W: the float weights the bytes approximate.
        weights: per-element error weights ``w >= 0`` (the Action-Mixed Fisher).
        config: :class:`RefineConfig`.
    Returns a :class:`RefineResult` whose ``error_after <= error_before``, both measured with gguf-py's
    dequantizer (any block that would get worse keeps its input bytes).
    """
    cfg = config or RefineConfig()
    L = _layout(type_name)
    W = np.asarray(W, np.float32)
    w = np.asarray(weights, np.float64)
    if W.ndim != 2 or W.shape[1] % QK_K:
        raise ValueError(f"refine_tensor: W must be [rows, cols] with cols % 256 == 0, got {W.shape}")
    if w.shape != W.shape:
        raise ValueError(f"refine_tensor: weights shape {w.shape} != W shape {W.shape}")
    if not (np.isfinite(W).all() and np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("refine_tensor: W and weights must be finite, weights >= 0")
    nb = W.size // QK_K
    if len(data) != nb * L.block_bytes:
        raise ValueError(f"refine_tensor: {len(data)} bytes, expected {nb * L.block_bytes} for {W.shape} {type_name}")
    dev = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sl = QK_K // L.n_sub
    x = torch.from_numpy(W.reshape(nb, L.n_sub, sl)).to(dev)
    w64 = torch.from_numpy(w.reshape(nb, L.n_sub, sl)).to(dev)
    w32 = w64.float()
    x64 = x.double()

    p0 = unpack_blocks(data, type_name)
    best = {
        "D": torch.from_numpy(p0.d.astype(np.float32)).to(dev),
        "M": torch.from_numpy(p0.dmin.astype(np.float32)).to(dev),
        "sc": torch.from_numpy(p0.sc.astype(np.int64)).to(dev),
        "m": torch.from_numpy(p0.m.astype(np.int64)).to(dev),
        "q": torch.from_numpy(p0.q.astype(np.float32)).to(dev).reshape(nb, L.n_sub, sl),
    }
    best_err = _block_error(x64, w64, _decode(best["D"], best["M"], best["sc"], best["m"], best["q"], L))
    for _ in range(cfg.iterations):
        D0, M0, sc0, m0 = best["D"], best["M"], best["sc"], best["m"]
        for f in cfg.d_factors:
            D, M = _to_f16(D0 * f), _to_f16(M0 * f)
            sc_c = torch.round(sc0.float() / f).clamp(0, L.sc_max).long()
            m_c = torch.round(m0.float() / f).clamp(0, L.sc_max).long()
            sc, m, q = _search_codes(x, w32, D, M, sc_c, m_c, L, cfg.window)
            D, M = _refit_dm(x, w32, sc, m, q, D, M)
            sc, m, q = _search_codes(x, w32, D, M, sc, m, L, cfg.window)
            e = _block_error(x64, w64, _decode(D, M, sc, m, q, L))
            better = e < best_err
            for k, v in (("D", D), ("M", M), ("sc", sc), ("m", m), ("q", q)):
                mask = better.view(-1, *([1] * (v.ndim - 1)))
                best[k] = torch.where(mask, v, best[k])
            best_err = torch.where(better, e, best_err)
    cand = BlockParams(
        d=best["D"].cpu().numpy().astype(np.float16), dmin=best["M"].cpu().numpy().astype(np.float16),
        sc=best["sc"].cpu().numpy().astype(np.uint8), m=best["m"].cpu().numpy().astype(np.uint8),
        q=best["q"].reshape(nb, QK_K).cpu().numpy().astype(np.uint8),
    )
    out = np.frombuffer(pack_blocks(cand, type_name), np.uint8).reshape(nb, L.block_bytes).copy()
    # the guarantee is checked with gguf-py's own decoder, block by block
    xb, wb = W.reshape(nb, QK_K), w.reshape(nb, QK_K)
    err0 = weighted_block_error(data, type_name, xb, wb)
    err1 = weighted_block_error(out.tobytes(), type_name, xb, wb)
    worse = err1 > err0
    if worse.any():
        log.warning("refine %s: %d block(s) decoded worse than the input; keeping their input bytes",
                    type_name, int(worse.sum()))
        out[worse] = np.frombuffer(bytes(data), np.uint8).reshape(nb, L.block_bytes)[worse]
        err1 = np.where(worse, err0, err1)
    before, after = float(err0.sum()), float(err1.sum())
    improved = int((err1 < err0).sum())
    log.debug("refine %s %s: weighted error %.6g -> %.6g (%d/%d blocks improved)", type_name, W.shape,
              before, after, improved, nb)
    return RefineResult(data=out.tobytes(), error_before=before, error_after=after, blocks_improved=improved,
                        n_blocks=nb)
