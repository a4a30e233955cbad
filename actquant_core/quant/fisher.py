"""Stage 2 of ActQuant: the per-element Action-Mixed Fisher (AMF) of every quantised weight.

Reference: Akbari et al., "ActQuant", arXiv 2605.24011, stage 2.  With a mixed loss

    L = (1 - alpha) * L_language + alpha * L_action
        OpenVLA-OFT: L_language = NLL of the action tokens through the LM head, L_action = L1 of the
                     action head's chunk vs the target chunk, alpha = 0.5;
        pi0.5:       alpha = 1, L_action = flow-matching loss ||v_theta(x_t, t, prefix) - (noise - actions)||^2,

the empirical Fisher of a weight ``W`` ``[rows, cols]`` is the mean over calibration batches of the squared
batch gradient, element by element:

    F = (1 / B) * sum_b (dL_b / dW)^2                      [rows, cols]

floored at ``floor_rel * mean(F[F > 0])`` so no weight gets zero importance.  ``F`` is what GGML's
block quantizers receive as per-row importance (see :mod:`.importance` / the native facade).

Memory: gradients are taken with ``torch.autograd.grad`` for the requested parameters only (other
parameters get ``requires_grad=False`` for the duration of the call and are restored afterwards), and the
running sum lives in ``accumulate_dtype`` on ``accumulate_device`` (default: each parameter's device).
For real-size models split the names with :func:`param_chunks` and run one accumulator per chunk.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FisherConfig", "FisherResult", "FisherAccumulator", "mixed_loss", "param_chunks"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class FisherConfig:
    """Configuration of :class:`FisherAccumulator`.

    Attributes:
        alpha: weight of the action loss in ``(1 - alpha) * language + alpha * action`` (OFT 0.5,
            pi0.5 1.0); in ``[0, 1]``.
        floor_rel: floor of ``F`` relative to the tensor's mean nonzero value (paper: 1e-6).
        accumulate_device: device of the running sums (None: the parameter's device; "cpu" to
            keep GPU memory for the model).
        accumulate_dtype: "float32" or "float64".
    """

    alpha: float = 0.5
    floor_rel: float = 1e-6
    accumulate_device: str | None = None
    accumulate_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"FisherConfig.alpha must be in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.floor_rel) and self.floor_rel >= 0):
            raise ValueError(f"FisherConfig.floor_rel must be finite and >= 0, got {self.floor_rel}")
        if self.accumulate_dtype not in ("float32", "float64"):
            raise ValueError(f"FisherConfig.accumulate_dtype={self.accumulate_dtype!r}; expected float32|float64")


@dataclass(frozen=True)
class FisherResult:
    """Output of :meth:`FisherAccumulator.solve`.

    Attributes:
        fisher: parameter name -> floored Fisher, same shape as the parameter, float32 on CPU.
        n_batches: batches accumulated.
        mean_losses: mean of each loss part and of the mixed loss ("total") over batches.
        config: the configuration used.
    """

    fisher: dict[str, torch.Tensor]
    n_batches: int
    mean_losses: dict[str, float]
    config: FisherConfig


def mixed_loss(parts: Mapping[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """``(1 - alpha) * parts["language"] + alpha * parts["action"]`` (a part with weight 0 may be absent)."""
    terms = []
    for key, w in (("language", 1.0 - alpha), ("action", alpha)):
        if w == 0.0:
            continue
        if key not in parts:
            raise ValueError(f"loss_fn returned {sorted(parts)} but alpha={alpha} needs the {key!r} loss")
        v = parts[key]
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise ValueError(f"loss part {key!r} must be a scalar tensor, got {type(v).__name__} "
                             f"{tuple(getattr(v, 'shape', ()))}")
        terms.append(w * v.reshape(()))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def param_chunks(model: torch.nn.Module, names: Sequence[str], max_bytes: int) -> list[list[str]]:
    """Split ``names`` into chunks whose float32 accumulators stay under ``max_bytes`` each."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
    params = dict(model.named_parameters())
    chunks: list[list[str]] = [[]]
    size = 0
    for n in names:
        if n not in params:
            raise KeyError(f"parameter {n!r} not found in the model")
        b = params[n].numel() * 4
        if chunks[-1] and size + b > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(n)
        size += b
    return chunks


class FisherAccumulator:
    """Accumulates ``(dL/dW)^2`` over batches, then floors and returns ``F`` per parameter.

    Args:
        model: the torch reference policy (not modified, apart from ``requires_grad`` flags restored
            after each batch).
        param_names: names (as in ``model.named_parameters()``) of the weights to score.
        loss_fn: ``loss_fn(model, batch) -> {"action": scalar, "language": scalar}``.
        config: :class:`FisherConfig`.
    The model's train/eval mode is the caller's choice (use eval to switch dropout off).
    """

    def __init__(self, model: torch.nn.Module, param_names: Iterable[str], loss_fn: LossFn,
                 config: FisherConfig | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.config = config or FisherConfig()
        self.param_names = list(param_names)
        if not self.param_names:
            raise ValueError("FisherAccumulator needs at least one parameter name")
        params = dict(model.named_parameters())
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise KeyError(f"parameters not found in the model: {missing[:5]} (of {len(missing)})")
        self._params = [params[n] for n in self.param_names]
        dtype = torch.float64 if self.config.accumulate_dtype == "float64" else torch.float32
        self._sum = {
            n: torch.zeros(p.shape, dtype=dtype, device=self.config.accumulate_device or p.device)
            for n, p in zip(self.param_names, self._params)
        }
        self._loss_sums: dict[str, float] = {}
        self._n = 0

    @property
    def n_batches(self) -> int:
        return self._n

    def add_batch(self, batch: Any) -> dict[str, float]:
        """One forward/backward of ``loss_fn`` on ``batch``; returns the loss parts as floats."""
        all_params = list(self.model.parameters())
        saved = [p.requires_grad for p in all_params]
        target = {id(p) for p in self._params}
        try:
            for p in all_params:
                p.requires_grad_(id(p) in target)
            parts = self.loss_fn(self.model, batch)
            L = mixed_loss(parts, self.config.alpha)
            if not bool(torch.isfinite(L)):
                raise ValueError(f"mixed loss is not finite at batch {self._n}: {float(L)}")
            grads = torch.autograd.grad(L, self._params, allow_unused=True)
        finally:
            for p, rg in zip(all_params, saved):
                p.requires_grad_(rg)
        for n, g in zip(self.param_names, grads):
            if g is None:
                continue  # parameter not on the loss path: zero gradient
            acc = self._sum[n]
            acc += g.detach().to(device=acc.device, dtype=acc.dtype).square()
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["total"] = float(L.detach())
        for k, v in out.items():
            self._loss_sums[k] = self._loss_sums.get(k, 0.0) + v
        self._n += 1
        return out

    def solve(self) -> FisherResult:
        """Mean over batches, floored; raises when no batch was added."""
        if self._n == 0:
            raise ValueError("FisherAccumulator.solve: no batch was added (empty calibration set)")
        fisher: dict[str, torch.Tensor] = {}
        for n, s in self._sum.items():
            F = (s / self._n).to(device="cpu", dtype=torch.float32)
            nz = F[F > 0]
            if nz.numel() == 0:
                log.warning("Fisher of %s is all zero (not on the loss path?): using uniform importance 1", n)
                F = torch.ones_like(F)
            else:
                F = F.clamp_min(self.config.floor_rel * float(nz.double().mean()))
            fisher[n] = F
        mean_losses = {k: v / self._n for k, v in self._loss_sums.items()}
        log.info("Fisher over %d batches, %d tensors; mean losses %s", self._n, len(fisher), mean_losses)
        return FisherResult(fisher=fisher, n_batches=self._n, mean_losses=mean_losses, config=self.config)
