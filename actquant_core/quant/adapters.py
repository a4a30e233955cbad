"""Per-family adapters: what the quantization pipeline needs to know about a policy family.

The pipeline (:mod:`.pipeline`) and calibration (:mod:`.calibrate`) are written once; a family plugs in
through a :class:`PolicyAdapter`:

* ``tensor_table(scope)`` -- every canonical tensor with its shape, group ("backbone", "vision",
  "projector", "expert", "head", "embedding", "norm"), layer index and whether the allocator may
  touch it under ``scope`` ("backbone" = the paper: LM linear layers only; "all" = also vision tower,
  projectors and action expert / heads);
* ``linear_targets()`` -- the torch modules behind the canonical 2-D linear weights (for hooks) with
  the pooling kind of their activations;
* ``prepare_batch(frames)`` -- calibration frames -> model inputs (numpy preprocessing shared with the
  runtime, then torch on the device);
* ``run_forward(batch)`` -- one forward that touches every target (hooks record), X = pooled input of
  the first decoder layer (``x_module``), ``action_target(batch)`` Y = the standardised-later action
  chunk ``[B, H * d]``;
* ``pool(kind, z, ctx)`` / ``rows(kind, z, ctx)`` -- token pooling for HSIC (one vector per frame) and
  the valid token rows for activation importance;
* ``loss_parts(model, batch)`` -- the Fisher loss parts (pi05 ``{"action": flow matching}``, OFT
  ``{"action": L1, "language": NLL}``) and ``fisher_alpha``;
* ``canonical_weights()`` / ``fisher_to_canonical()`` -- name and layout conversions;
* ``gguf_metadata()`` -- config, norm stats and tokenizer for the exporter.

:class:`Pi05Adapter` and :class:`OftAdapter` exist; :func:`make_adapter` dispatches by family.  OFT LM
activations are mean-pooled over every (non-pad) token of the multimodal sequence.  Pooling (ActQuant, Akbari et al. arXiv 2605.24011): π₀.₅ LM activations are
mean-pooled over the valid prefix tokens; vision activations over patches then over valid cameras;
expert activations over the action tokens; per-sample vectors (adaRMS / time MLP inputs) as they are.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actquant_core.constants import QUANT_SCOPES

log = logging.getLogger(__name__)

__all__ = [
    "SCOPES",
    "POOLINGS",
    "GROUPS",
    "TensorInfo",
    "LinearTarget",
    "PolicyAdapter",
    "Pi05Adapter",
    "OftAdapter",
    "make_adapter",
]

#: Allocation scopes: the paper's (LM backbone linear layers) or every linear layer ("beyond the paper").
SCOPES = QUANT_SCOPES
#: Token pooling of per-layer activations: mean over valid tokens only, or over every token.
POOLINGS = ("valid", "all")
#: Tensor groups of the tensor table.
GROUPS = ("backbone", "vision", "projector", "expert", "head", "embedding", "norm", "position")

# pooling kinds of linear targets
POOL_PREFIX = "prefix"  # [B, Lp, d] LM tokens: mean over (valid) prefix tokens
POOL_PATCHES = "patches"  # [B*C, P, d] vision tokens: mean over patches, then over (valid) cameras
POOL_SUFFIX = "suffix"  # [B, H, d] action tokens: mean over the horizon
POOL_SAMPLE = "sample"  # [B, d] one vector per sample already (adaRMS condition, time MLP)


@dataclass(frozen=True)
class TensorInfo:
    """One canonical tensor as the pipeline sees it.

    Attributes:
        name: canonical (GGUF) name.
        shape: numpy shape (``[rows, cols]`` for matrices).
        group: one of :data:`GROUPS`.
        layer: layer index (int) inside its group, or None.
        linear: True for a 2-D linear weight with a torch module behind it (hookable).
    """

    name: str
    shape: tuple[int, ...]
    group: str
    layer: int | None
    linear: bool

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"TensorInfo {self.name!r}: group={self.group!r}; expected one of {GROUPS}")


@dataclass(frozen=True)
class LinearTarget:
    """A hookable linear layer.

    Attributes:
        name: canonical weight name.
        module: dotted torch module path (``model.get_submodule(module)``).
        param: torch parameter name of the weight (``model.named_parameters()``).
        pool: pooling kind of its activations (``prefix`` / ``patches`` / ``suffix`` / ``sample``).
        group, layer: as in :class:`TensorInfo`.
    """

    name: str
    module: str
    param: str
    pool: str
    group: str
    layer: int | None


class PolicyAdapter(abc.ABC):
    """Family interface of the quantization pipeline (see the module docstring)."""

    family: str = ""
    #: weight of the action loss in the Fisher's mixed loss (pi05 1.0; OFT 0.5)
    fisher_alpha: float = 1.0
    #: loss parts ``loss_parts`` returns
    loss_names: tuple[str, ...] = ("action",)

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    # --- tensors -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def tensor_table(self) -> list[TensorInfo]:
        """Every canonical tensor of the model (stable order)."""

    @abc.abstractmethod
    def linear_targets(self) -> list[LinearTarget]:
        """Hookable linear layers (every group)."""

    def inactive_tensors(self) -> set[str]:
        """Canonical weights no action output depends on (their exact Fisher is zero); default none."""
        return set()

    @abc.abstractmethod
    def canonical_weights(self) -> dict[str, np.ndarray]:
        """Canonical name -> float32 numpy weight (what the exporter writes)."""

    @abc.abstractmethod
    def fisher_param_names(self, names: Sequence[str]) -> dict[str, str]:
        """Canonical names -> torch parameter names for the Fisher (names without one are dropped)."""

    @abc.abstractmethod
    def fisher_to_canonical(self, name: str, F: torch.Tensor) -> np.ndarray:
        """A parameter-shaped Fisher -> the canonical layout of ``name`` (float32 numpy)."""

    # --- data --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare_batch(self, frames: Sequence[Any], device: torch.device) -> dict[str, torch.Tensor]:
        """Calibration frames -> model inputs on ``device`` (plus ``actions`` normalised, padded)."""

    @abc.abstractmethod
    def action_target(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Y: the action chunk of each frame, flattened ``[B, H * d]`` (un-padded dims)."""

    @property
    @abc.abstractmethod
    def x_module(self) -> str:
        """Module whose forward-pre-hook input is the first decoder layer's input (X)."""

    @abc.abstractmethod
    def run_forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> None:
        """One forward through every target (hooks record); noise / times drawn from ``generator``."""

    @abc.abstractmethod
    def pool(self, kind: str, z: torch.Tensor, batch: Mapping[str, torch.Tensor], pooling: str) -> torch.Tensor:
        """Token-pool an activation of pooling ``kind`` to ``[B, d]``."""

    @abc.abstractmethod
    def rows(self, kind: str, z: torch.Tensor, batch: Mapping[str, torch.Tensor], pooling: str) -> torch.Tensor:
        """The token rows ``[N, d]`` of an activation that count for activation importance."""

    @abc.abstractmethod
    def loss_parts(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalar loss parts for the Fisher (``loss_names``); random draws are in ``batch``."""

    @abc.abstractmethod
    def policy_actions(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """The full-precision policy's own action chunk for the batch (same layout as ``batch["actions"]``)."""

    @abc.abstractmethod
    def add_loss_randomness(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        """Draw the loss's random inputs (noise, times) into ``batch`` from ``generator``."""

    # --- export ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def gguf_metadata(self) -> dict[str, Any]:
        """``{"config": dict, "norm_stats": dict | None, "tokenizer_model": bytes | None}``."""


# ----------------------------------------------------------------------------------------------------
# pi0.5
# ----------------------------------------------------------------------------------------------------

def _linear_group(name: str, groups) -> tuple[str, int | None] | None:
    """(group, layer index or None) of the first ``(regex, group, kind)`` in ``groups`` matching ``name``."""
    for rx, group, _ in groups:
        m = rx.match(name)
        if m:
            return group, int(m.group(1)) if m.groups() and m.group(1) and m.group(1).isdigit() else None
    return None


def _tensor_table(pairs, shapes: Mapping[str, Any], classify) -> list[TensorInfo]:
    """TensorInfo of every canonical name in ``pairs`` (``classify(name, shape) -> (group, layer, linear)``)."""
    out = []
    for name, _, _ in pairs:
        shape = tuple(shapes[name])
        out.append(TensorInfo(name, shape, *classify(name, shape)))
    return out


def _linear_targets(adapter: PolicyAdapter, internal: Mapping[str, tuple[str, str]], groups) -> list[LinearTarget]:
    """A LinearTarget per linear tensor of ``adapter`` (module = its parameter's parent, kind from ``groups``)."""
    out = []
    for info in adapter.tensor_table():
        if not info.linear:
            continue
        param, _ = internal[info.name]
        kind = next(k for rx, _, k in groups if rx.match(info.name))
        out.append(LinearTarget(info.name, param.rsplit(".", 1)[0], param, kind, info.group, info.layer))
    return out


_PI05_LINEAR_GROUPS = (
    # regex over canonical names -> (group, pool kind)
    (re.compile(r"^lm\.blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$"), "backbone", POOL_PREFIX),
    (re.compile(r"^v\.blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_out|ffn_up|ffn_down)\.weight$"), "vision", POOL_PATCHES),
    (re.compile(r"^ex\.blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$"), "expert", POOL_SUFFIX),
    (re.compile(r"^ex\.blk\.(\d+)\.(attn_norm_ada|ffn_norm_ada)\.weight$"), "expert", POOL_SAMPLE),
    (re.compile(r"^ex\.output_norm_ada\.weight$"), "expert", POOL_SAMPLE),
    (re.compile(r"^mm\.proj\.weight$"), "projector", POOL_PATCHES),
    (re.compile(r"^act\.in_proj\.weight$"), "head", POOL_SUFFIX),
    (re.compile(r"^act\.out_proj\.weight$"), "head", POOL_SUFFIX),
    (re.compile(r"^time\.mlp_(in|out)\.weight$"), "head", POOL_SAMPLE),
)


class Pi05Adapter(PolicyAdapter):
    """π₀.₅ (torch reference ``Pi05Model``) for the quantization pipeline.

    Args:
        model: the reference model (any device; eval mode is set).
        norm_stats: ``NormStats`` of the checkpoint or None (identity normalisation).
        tokenizer: ``SentencePieceTokenizer`` the prompts are built with.
        action_dims: un-padded action size (defaults to the norm stats' action dim, else 7).
    """

    family = "pi05"
    fisher_alpha = 1.0
    loss_names = ("action",)

    def __init__(self, model: torch.nn.Module, norm_stats: Any, tokenizer: Any, action_dims: int | None = None) -> None:
        from actquant_core.constants import PI05_FAMILY
        from actquant_core.policies.pi05.canonical import canonical_name_pairs
        from actquant_core.policies.pi05.preprocess import Pi05Preprocessor

        super().__init__(model.eval())
        self.family = PI05_FAMILY
        self.config = model.config
        self.norm_stats = norm_stats
        self.tokenizer = tokenizer
        if action_dims is None:
            action_dims = norm_stats.actions.dim if norm_stats is not None else 7
        if not 0 < action_dims <= self.config.action_dim:
            raise ValueError(f"action_dims={action_dims} must be in [1, {self.config.action_dim}]")
        self.action_dims = int(action_dims)
        self.preprocessor = Pi05Preprocessor(self.config, tokenizer, norm_stats)
        self._pairs = canonical_name_pairs(self.config)  # (canonical, internal param, transform)
        self._internal = {c: (p, t) for c, p, t in self._pairs}

    # --- tensors -----------------------------------------------------------------------------------
    def tensor_table(self) -> list[TensorInfo]:
        from actquant_core.policies.pi05.canonical import canonical_shapes

        return _tensor_table(self._pairs, canonical_shapes(self.config), self._classify)

    @staticmethod
    def _classify(name: str, shape: tuple[int, ...]) -> tuple[str, int | None, bool]:
        hit = _linear_group(name, _PI05_LINEAR_GROUPS)
        if hit is not None:
            return hit[0], hit[1], True
        if len(shape) < 2:
            return "norm", None, False
        if name == "lm.token_embd.weight":
            return "embedding", None, False
        if name == "v.position_embd.weight":
            return "position", None, False
        if name == "v.patch_embd.weight":
            return "vision", None, False  # a conv: stored 2-D, no Linear module to hook
        raise ValueError(f"pi05 adapter: unclassified canonical tensor {name!r} {shape}")

    def linear_targets(self) -> list[LinearTarget]:
        return _linear_targets(self, self._internal, _PI05_LINEAR_GROUPS)

    def inactive_tensors(self) -> set[str]:
        """The last LM layer's q, o and MLP weights: the expert reads only that layer's prefix K/V, so
        nothing downstream of its attention output reaches an action (the native graph skips them)."""
        from actquant_core.constants import PI05_TENSOR_NAMES

        i = self.config.lm_depth - 1
        return {PI05_TENSOR_NAMES[k].format(i=i) for k in ("lm_q", "lm_o", "lm_gate", "lm_up", "lm_down")}

    def canonical_weights(self) -> dict[str, np.ndarray]:
        from actquant_core.policies.pi05.canonical import canonical_state_dict

        return canonical_state_dict(self.model)

    def fisher_param_names(self, names: Sequence[str]) -> dict[str, str]:
        out = {}
        for n in names:
            if n not in self._internal:
                raise KeyError(f"pi05 has no canonical tensor {n!r}")
            param, transform = self._internal[n]
            if transform == "fold":
                continue  # folded norms (1 + w): not quantized
            out[n] = param
        return out

    def fisher_to_canonical(self, name: str, F: torch.Tensor) -> np.ndarray:
        _, transform = self._internal[name]
        arr = F.detach().float().cpu()
        if transform == "conv":
            arr = arr.reshape(arr.shape[0], -1)
        return np.ascontiguousarray(arr.numpy())

    # --- data --------------------------------------------------------------------------------------
    def prepare_batch(self, frames: Sequence[Any], device: torch.device) -> dict[str, torch.Tensor]:
        """frames: objects with ``images`` {slot: uint8 [h, w, 3]}, ``state`` [d], ``instruction``,
        ``actions`` [H, d] (robot units).  Returns images [B, C, 3, S, S], image_masks [B, C],
        tokens / token_masks [B, T], actions [B, H, action_dim] (normalised, padded)."""
        from actquant_core.policies.pi05.preprocess import Pi05Inputs

        if not frames:
            raise ValueError("prepare_batch got no frames")
        c = self.config
        items, acts = [], []
        for f in frames:
            known = {k: v for k, v in f.images.items() if k in c.camera_slots}
            if not known:
                raise ValueError(f"frame has cameras {sorted(f.images)}, none of the policy's slots {list(c.camera_slots)}")
            items.append(self.preprocessor(known, f.state, f.instruction))
            a = np.asarray(f.actions, np.float32)
            if a.ndim != 2 or a.shape[0] != c.action_horizon:
                raise ValueError(f"frame action chunk must be [{c.action_horizon}, d], got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError("frame action chunk contains NaN or Inf")
            acts.append(self.preprocessor.normalize_actions(a, f.state))
        inp = Pi05Inputs.stack(items)
        return {
            "images": torch.from_numpy(inp.images).to(device),
            "image_masks": torch.from_numpy(inp.image_masks).to(device),
            "tokens": torch.from_numpy(inp.tokens).to(device),
            "token_masks": torch.from_numpy(inp.token_masks).to(device),
            "actions": torch.from_numpy(np.stack(acts)).to(device),
        }

    def action_target(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = batch["actions"][..., : self.action_dims]  # [B, H, d]
        return a.reshape(a.shape[0], -1)

    @property
    def x_module(self) -> str:
        return "lm.layers.0.input_layernorm"

    def add_loss_randomness(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        """noise ~ N(0, I) [B, H, A]; t ~ Beta(1.5, 1) * 0.999 + 0.001 (inverse CDF ``u^(1/1.5)``)."""
        a = batch["actions"]
        noise = torch.randn(a.shape, generator=generator, dtype=torch.float32)
        u = torch.rand((a.shape[0],), generator=generator, dtype=torch.float32)
        batch["noise"] = noise.to(a.device)
        batch["t"] = (u.pow(1.0 / 1.5) * 0.999 + 0.001).to(a.device)

    @torch.no_grad()
    def policy_actions(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Sampled actions [B, H, action_dim] (normalised, padded) of the reference model, noise from ``generator``."""
        a = batch["actions"]
        noise = torch.randn(a.shape, generator=generator, dtype=torch.float32).to(a.device)
        return self.model.sample_actions(batch["images"], batch["image_masks"], batch["tokens"], batch["token_masks"],
                                         noise).to(a.dtype)

    def run_forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> None:
        """One joint prefix + suffix forward at a flow-matching point (x_t from the true chunk)."""
        b = dict(batch)
        if "noise" not in b:
            self.add_loss_randomness(b, generator)
        te = b["t"][:, None, None]
        x_t = te * b["noise"] + (1.0 - te) * b["actions"]
        self.model.joint_velocity(b["images"], b["image_masks"], b["tokens"], b["token_masks"], x_t, b["t"])

    def _prefix_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, Lp] bool: valid prefix tokens (image tokens of present cameras, then real text tokens)."""
        c = self.config
        im = batch["image_masks"].to(torch.bool)
        B = im.shape[0]
        img = im[:, :, None].expand(B, c.num_cameras, c.num_patches).reshape(B, -1)
        return torch.cat([img, batch["token_masks"].to(torch.bool)], dim=1)

    def pool(self, kind: str, z: torch.Tensor, batch: Mapping[str, torch.Tensor], pooling: str) -> torch.Tensor:
        z = z.float()
        B = batch["image_masks"].shape[0]
        if kind == POOL_SAMPLE or z.ndim == 2:
            return z.reshape(B, -1) if z.ndim == 2 else z.reshape(B, -1, z.shape[-1]).mean(1)
        if kind == POOL_PREFIX:
            if pooling == "all":
                return z.mean(1)
            m = self._prefix_mask(batch).to(z.dtype)[..., None]  # [B, Lp, 1]
            return (z * m).sum(1) / m.sum(1).clamp_min(1.0)
        if kind == POOL_PATCHES:
            C = self.config.num_cameras
            per_cam = z.reshape(B, C, z.shape[-2], z.shape[-1]).mean(2)  # [B, C, d]
            if pooling == "all":
                return per_cam.mean(1)
            m = batch["image_masks"].to(z.dtype)[..., None]  # [B, C, 1]
            return (per_cam * m).sum(1) / m.sum(1).clamp_min(1.0)
        if kind == POOL_SUFFIX:
            return z.mean(1)
        raise ValueError(f"unknown pooling kind {kind!r}")

    def rows(self, kind: str, z: torch.Tensor, batch: Mapping[str, torch.Tensor], pooling: str) -> torch.Tensor:
        if pooling == "all" or kind in (POOL_SAMPLE, POOL_SUFFIX) or z.ndim == 2:
            return z.reshape(-1, z.shape[-1])
        B = batch["image_masks"].shape[0]
        if kind == POOL_PREFIX:
            return z[self._prefix_mask(batch)]
        if kind == POOL_PATCHES:
            C = self.config.num_cameras
            zc = z.reshape(B, C, z.shape[-2], z.shape[-1])
            return zc[batch["image_masks"].to(torch.bool)].reshape(-1, z.shape[-1])
        raise ValueError(f"unknown pooling kind {kind!r}")

    def loss_parts(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"action": flow-matching MSE over the un-padded action dims}`` at the batch's noise / t."""
        loss = model.flow_matching_loss(dict(batch), noise=batch["noise"], t=batch["t"],
                                        loss_action_dims=self.action_dims)
        return {"action": loss}

    # --- export ------------------------------------------------------------------------------------
    def gguf_metadata(self) -> dict[str, Any]:
        import json

        ns = None
        if self.norm_stats is not None:
            ns = json.loads(self.norm_stats.to_json())
        return {"config": self.config.to_dict(), "norm_stats": ns,
                "tokenizer_model": getattr(self.tokenizer, "model_bytes", None)}


# ----------------------------------------------------------------------------------------------------
# OpenVLA-OFT
# ----------------------------------------------------------------------------------------------------

_OFT_LINEAR_GROUPS = (
    # regex over canonical names -> (group, pool kind); POOL_PREFIX = every non-pad token of the LM sequence
    (re.compile(r"^lm\.blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$"), "backbone", POOL_PREFIX),
    (re.compile(r"^v[ds]\.blk\.(\d+)\.(attn_qkv|attn_out|ffn_up|ffn_down)\.weight$"), "vision", POOL_PATCHES),
    (re.compile(r"^v[ds]\.blk\.(\d+)\.(film_scale|film_shift)\.weight$"), "vision", POOL_SAMPLE),
    (re.compile(r"^mm\.fc[123]\.weight$"), "projector", POOL_SUFFIX),
    (re.compile(r"^proprio\.fc[12]\.weight$"), "projector", POOL_SAMPLE),
    (re.compile(r"^head\.(fc1|fc2)\.weight$"), "head", POOL_SUFFIX),
    (re.compile(r"^head\.blk\.(\d+)\.fc\.weight$"), "head", POOL_SUFFIX),
)


class OftAdapter(PolicyAdapter):
    """OpenVLA-OFT (torch reference ``OftModel``) for the quantization pipeline.

    Linear targets of the paper's scope: the Llama backbone's q, k, v, o, gate, up, down per layer.
    X = the first decoder layer's (RMS-normed) input, hooked at ``layers.0.q_proj`` (the Llama layers hold
    their norm as a bare parameter, so the normed input is the first hookable point), pooled over every
    non-pad token; Y = the normalised action chunk ``[B, chunk * action_dims]``.  Fisher loss parts
    ``{"action": L1 of the action head, "language": NLL of the discretised action tokens}``, alpha 0.5.
    ``lm.output.weight`` (NLL only) is not part of the tensor table nor of the exported GGUF.

    Args:
        model: the reference ``OftModel`` (any device; eval mode is set).
        norm_stats: ``OftNormStats`` or None (identity normalisation).
        tokenizer: ``SentencePieceTokenizer`` the prompts are built with.
        action_dims: un-padded action size (defaults to the norm stats' action dim, else the config's).
        camera_map: calibration camera name -> OFT image slot (default: the simulator's base camera ->
            ``image_slots[0]``, its wrist camera -> ``image_slots[1]``); frames already keyed by OFT slot
            names pass through.
    """

    family = "openvla_oft"
    fisher_alpha = 0.5
    loss_names = ("action", "language")

    def __init__(self, model: torch.nn.Module, norm_stats: Any, tokenizer: Any, action_dims: int | None = None,
                 camera_map: Mapping[str, str] | None = None) -> None:
        from actquant_core.constants import OFT_FAMILY
        from actquant_core.policies.openvla_oft.canonical import canonical_name_pairs
        from actquant_core.policies.openvla_oft.preprocess import OftPreprocessor

        super().__init__(model.eval())
        self.family = OFT_FAMILY
        self.config = c = model.config
        self.norm_stats = norm_stats
        self.tokenizer = tokenizer
        if action_dims is None:
            action_dims = norm_stats.action.dim if norm_stats is not None else c.action_dim
        if not 0 < action_dims <= c.action_dim:
            raise ValueError(f"action_dims={action_dims} must be in [1, {c.action_dim}]")
        self.action_dims = int(action_dims)
        if camera_map is None:
            from actquant_core.policies.common.image import sim_camera_map

            camera_map = sim_camera_map(c.image_slots)
        bad = sorted(v for v in camera_map.values() if v not in c.image_slots)
        if bad:
            raise ValueError(f"camera_map targets {bad} are not image slots of the policy {list(c.image_slots)}")
        self.camera_map = dict(camera_map)
        self.preprocessor = OftPreprocessor(c, tokenizer, norm_stats)
        self._pairs = canonical_name_pairs(c, include_lm_head=False)
        self._internal = {n: (p, t) for n, p, t in self._pairs}
        self._all_internal = {n: (p, t) for n, p, t in canonical_name_pairs(c, include_lm_head=True)}

    @property
    def action_horizon(self) -> int:
        """Actions per calibration chunk (the OFT chunk)."""
        return int(self.config.chunk)

    # --- tensors -----------------------------------------------------------------------------------
    def tensor_table(self) -> list[TensorInfo]:
        from actquant_core.policies.openvla_oft.canonical import canonical_shapes

        return _tensor_table(self._pairs, canonical_shapes(self.config, include_lm_head=False), self._classify)

    @staticmethod
    def _classify(name: str, shape: tuple[int, ...]) -> tuple[str, int | None, bool]:
        from actquant_core.constants import OFT_KEEP_F32

        hit = _linear_group(name, _OFT_LINEAR_GROUPS)
        if hit is not None:
            return hit[0], hit[1], True
        if name in OFT_KEEP_F32:
            return "position", None, False  # cls / register tokens, position embeddings: kept F32
        if len(shape) < 2:
            return "norm", None, False
        if name == "lm.token_embd.weight":
            return "embedding", None, False
        if name in ("vd.patch_embd.weight", "vs.patch_embd.weight"):
            return "vision", None, False  # a conv: stored 2-D, no Linear module to hook
        raise ValueError(f"openvla_oft adapter: unclassified canonical tensor {name!r} {shape}")

    def linear_targets(self) -> list[LinearTarget]:
        return _linear_targets(self, self._internal, _OFT_LINEAR_GROUPS)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        from actquant_core.policies.openvla_oft.canonical import canonical_state_dict

        return canonical_state_dict(self.model, include_lm_head=False)

    def fisher_param_names(self, names: Sequence[str]) -> dict[str, str]:
        out = {}
        for n in names:
            if n not in self._all_internal:
                raise KeyError(f"openvla_oft has no canonical tensor {n!r}")
            out[n] = self._all_internal[n][0]
        return out

    def fisher_to_canonical(self, name: str, F: torch.Tensor) -> np.ndarray:
        _, transform = self._all_internal[name]
        arr = F.detach().float().cpu()
        if transform == "conv":
            arr = arr.reshape(arr.shape[0], -1)
        return np.ascontiguousarray(arr.numpy())

    # --- data --------------------------------------------------------------------------------------
    def _frame_images(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        slots = self.config.image_slots
        out = {s: images[s] for s in slots if s in images}
        for cam, slot in self.camera_map.items():
            if cam in images and slot not in out:
                out[slot] = images[cam]
        missing = [s for s in slots if s not in out]
        if missing:
            raise ValueError(f"frame has cameras {sorted(images)}; OFT slots {missing} are missing "
                             f"(camera_map {self.camera_map})")
        return out

    def _frame_state(self, state: np.ndarray) -> np.ndarray:
        s = np.asarray(state, np.float32).reshape(-1)
        d = self.config.proprio_dim
        if s.shape[0] > d:
            raise ValueError(f"frame state has {s.shape[0]} entries, more than the policy's proprio_dim={d}")
        if s.shape[0] < d:
            s = np.concatenate([s, np.zeros(d - s.shape[0], np.float32)])  # padded like the action dims
        return s

    def prepare_batch(self, frames: Sequence[Any], device: torch.device) -> dict[str, torch.Tensor]:
        """frames: ``CalibFrame``-like (``images`` {camera: uint8 [h, w, 3]}, ``state`` [<= proprio_dim],
        ``instruction``, ``actions`` [chunk, <= action_dim] robot units).  Returns pixels [B, 6*I, S, S],
        proprio [B, proprio_dim], input_ids / attention_mask / action_mask [B, T], actions
        [B, chunk, action_dim] (normalised, zero-padded) and action_token_ids [B, chunk*action_dim]."""
        import dataclasses

        from actquant_core.policies.openvla_oft.preprocess import OftInputs

        if not frames:
            raise ValueError("prepare_batch got no frames")
        c = self.config
        items, acts = [], []
        for f in frames:
            items.append(self.preprocessor(self._frame_images(f.images), self._frame_state(f.state), f.instruction))
            a = np.asarray(f.actions, np.float32)
            if a.ndim != 2 or a.shape[0] != c.chunk or not 0 < a.shape[1] <= c.action_dim:
                raise ValueError(f"frame action chunk must be [{c.chunk}, <= {c.action_dim}], got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError("frame action chunk contains NaN or Inf")
            full = np.zeros((c.chunk, c.action_dim), np.float32)
            full[:, : a.shape[1]] = a
            if self.norm_stats is not None:
                full = self.preprocessor.normalize_actions(full)
            acts.append(np.asarray(full, np.float32))
        inp = OftInputs.stack(items, c.pad_token_id)
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                 for k, v in ((f.name, getattr(inp, f.name)) for f in dataclasses.fields(inp))}
        batch["actions"] = torch.from_numpy(np.stack(acts)).to(device)
        self._set_token_ids(batch)
        return batch

    def _set_token_ids(self, batch: dict[str, torch.Tensor]) -> None:
        from actquant_core.policies.openvla_oft.preprocess import actions_to_token_ids

        a = batch["actions"]
        ids = actions_to_token_ids(a.detach().float().cpu().numpy(), self.config)
        batch["action_token_ids"] = torch.from_numpy(ids).to(a.device)

    def action_target(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = batch["actions"][..., : self.action_dims]  # [B, chunk, d]
        return a.reshape(a.shape[0], -1)

    @property
    def x_module(self) -> str:
        return "layers.0.q_proj"

    def add_loss_randomness(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        """OFT's losses draw nothing; the NLL labels are re-derived from ``batch["actions"]`` (which
        ``targets="policy"`` may have replaced)."""
        self._set_token_ids(batch)

    @torch.no_grad()
    def policy_actions(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """The reference model's (deterministic) normalised chunk [B, chunk, action_dim]."""
        a = batch["actions"]
        out = self.model.predict_actions(batch["pixels"], batch["proprio"], batch["input_ids"],
                                         batch["attention_mask"], batch["action_mask"])
        return out.to(a.dtype)

    def run_forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> None:
        """One parallel-decoding forward (vision, projector, Llama, action head)."""
        self.model.predict_actions(batch["pixels"], batch["proprio"], batch["input_ids"], batch["attention_mask"],
                                   batch["action_mask"])

    def _seq_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, L] bool: non-pad tokens of the LM sequence ([BOS][vision + proprio][text ...])."""
        att = batch["attention_mask"].to(torch.bool)
        B = att.shape[0]
        ones = torch.ones(B, self.config.num_vision_tokens, dtype=torch.bool, device=att.device)
        return torch.cat([att[:, :1], ones, att[:, 1:]], dim=1)

    def pool(self, kind: str, z: torch.Tensor, batch: Mapping[str, torch.Tensor], pooling: str) -> torch.Tensor:
        z = z.float()
        B = batch["pixels"].shape[0]
        if kind == POOL_SAMPLE or z.ndim == 2:
            return z.reshape(B, -1, z.shape[-1]).mean(1)  # per image (FiLM) -> mean over images
        if kind == POOL_PREFIX:
            if pooling == "all":
                return z.mean(1)
            m = self._seq_mask(batch).to(z.dtype)[..., None]  # [B, L, 1]
            if m.shape[1] != z.shape[1]:
                raise ValueError(f"LM activation has {z.shape[1]} tokens, the sequence mask {m.shape[1]}")
            return (z * m).sum(1) / m.sum(1).clamp_min(1.0)
        if kind == POOL_PATCHES:
            return z.reshape(B, -1, z.shape[-2], z.shape[-1]).mean(2).mean(1)  # tokens, then images
        if kind == POOL_SUFFIX:
            return z.mean(1)
        raise ValueError(f"unknown pooling kind {kind!r}")

    def rows(self, kind: str, z: torch.Tensor, batch: Mapping[str, torch.Tensor], pooling: str) -> torch.Tensor:
        if kind == POOL_PREFIX and pooling != "all" and z.ndim == 3:
            return z[self._seq_mask(batch)]
        return z.reshape(-1, z.shape[-1])

    def loss_parts(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"action": L1 of the head's chunk, "language": NLL of the action tokens}`` over the un-padded dims."""
        c = self.config
        d = self.action_dims
        parts = model.losses(dict(batch), reduction="none", with_nll=True)
        l1 = parts["l1"][..., :d].mean()
        nll = parts["nll"].reshape(-1, c.chunk, c.action_dim)[..., :d].mean()
        return {"action": l1, "language": nll}

    # --- export ------------------------------------------------------------------------------------
    def gguf_metadata(self) -> dict[str, Any]:
        import json

        ns = None if self.norm_stats is None else json.loads(self.norm_stats.to_json())
        return {"config": self.config.to_dict(), "norm_stats": ns,
                "tokenizer_model": getattr(self.tokenizer, "model_bytes", None)}


def make_adapter(family: str, model: torch.nn.Module, **kwargs: Any) -> PolicyAdapter:
    """The adapter of ``family`` ("pi05" or "openvla_oft")."""
    from actquant_core.constants import OFT_FAMILY, PI05_FAMILY

    if family == PI05_FAMILY:
        return Pi05Adapter(model, **kwargs)
    if family == OFT_FAMILY:
        return OftAdapter(model, **kwargs)
    raise ValueError(f"no quantization adapter for policy family {family!r} (known: {PI05_FAMILY!r}, {OFT_FAMILY!r})")
