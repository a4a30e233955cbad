"""π₀.₅ PyTorch reference model (our own implementation; plain torch modules, no transformers).

Architecture (see /work/shared/reference/pi05.md and openpi ``models/pi0.py``, ``gemma.py``):

- SigLIP vision tower: conv patch embedding (+bias), learned position embedding, pre-LN encoder blocks
  (LayerNorm with bias, MHA with biases, tanh-GELU MLP), ``post_layernorm``; per camera.
- Projector: Linear vision_width -> lm_width (no 1/sqrt(d) division).
- Gemma LM ("prefix" stream): RMSNorm ``x*rsqrt(mean(x^2)+eps)*(1+w)`` in fp32, MQA, split-half RoPE,
  GeGLU with tanh-GELU, token embedding * ``config.embed_scale``.
- Gemma action expert ("suffix" stream): same depth/heads/head_dim, own width/MLP, every RMSNorm is
  adaRMS: ``dense(cond) -> (scale, shift, gate)``, ``x_hat = rms(x)*(1+scale)+shift`` and gated residual
  ``x + y*gate``.  cond = swish(time_mlp_out(swish(time_mlp_in(posemb_sincos(t))))).
- Joint attention per layer: each stream makes q/k/v with its own weights; they are concatenated along
  the sequence, one softmax runs over the union, the result is split back to each stream's o_proj.
- Masks: big_vision cumulative ``ar_mask`` (prefix ar=0, first action token ar=1, rest 0), pad masks,
  masked logits set to the finite ``PI05_MASK_VALUE``; positions = cumsum(pad_mask) - 1.

Tensor conventions: B batch, C cameras (config.camera_slots), P patches per camera, T text tokens
(max_token_len), Lp = C*P + T prefix length, H action horizon, A action_dim (32), D widths.
Named intermediates: see ``actquant_core.constants.PI05_INTER_*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actquant_core.constants import (
    PI05_INTER_ACTIONS,
    PI05_INTER_PREFIX_EMB,
    PI05_INTER_PREFIX_K,
    PI05_INTER_PREFIX_V,
    PI05_INTER_TIME_COND,
    PI05_INTER_VELOCITY,
    PI05_INTER_VISION,
    PI05_INTER_X_T,
    PI05_MASK_VALUE,
)
from actquant_core.policies.pi05.config import Pi05Config

# ------------------------------------------------------------------------------------------------
# functional helpers
# ------------------------------------------------------------------------------------------------


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation (``gelu_pytorch_tanh``)."""
    return F.gelu(x, approximate="tanh")


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x * rsqrt(mean(x^2) + eps), computed in fp32, returned in fp32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)


def posemb_sincos(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine embedding of scalar times.  t: [B] -> [B, dim] = [sin(2πt/p) | cos(2πt/p)],
    periods p geometric from min_period to max_period over dim/2 entries (openpi ``posemb_sincos``)."""
    if dim % 2 != 0:
        raise ValueError(f"posemb_sincos dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    scaled = t.to(torch.float64)[:, None] * (2.0 * math.pi / period)[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1).to(torch.float32)


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Split-half rotary embedding.  x: [B, L, N, hd]; positions: [B, L] (int) -> same shape as x.

    Rotation angle for pair (j, j+hd/2) is pos / theta^(2j/hd); computed in fp32."""
    hd = x.shape[-1]
    half = hd // 2
    exponents = torch.arange(half, dtype=torch.float32, device=x.device) * (2.0 / hd)
    timescale = theta**exponents  # [half]
    radians = positions.to(torch.float32)[..., None] / timescale  # [B, L, half]
    sin = torch.sin(radians)[:, :, None, :]
    cos = torch.cos(radians)[:, :, None, :]
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def make_attn_mask(pad_mask: Tensor, ar_mask: Tensor) -> Tensor:
    """big_vision prefix-LM mask.  pad_mask, ar_mask: [B, L] bool/int -> [B, L, L] bool (query, key).

    A query may attend to a key when cumsum(ar)[key] <= cumsum(ar)[query] and both are valid."""
    cum = torch.cumsum(ar_mask.to(torch.int64), dim=1)
    attn = cum[:, None, :] <= cum[:, :, None]
    valid = pad_mask[:, None, :] & pad_mask[:, :, None]
    return attn & valid


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Masked softmax attention with grouped (MQA) keys.

    q: [B, Lq, N, hd] (already scaled by 1/sqrt(hd)); k, v: [B, Lk, K, hd] with N % K == 0;
    mask: [B, Lq, Lk] bool.  Masked logits get ``PI05_MASK_VALUE`` (finite), softmax in fp32.
    Returns [B, Lq, N*hd]."""
    B, Lq, N, hd = q.shape
    K = k.shape[2]
    qg = q.reshape(B, Lq, K, N // K, hd)
    logits = torch.einsum("bqkgh,bskh->bkgqs", qg.float(), k.float())  # [B, K, G, Lq, Lk]
    logits = torch.where(mask[:, None, None, :, :], logits, torch.tensor(PI05_MASK_VALUE, dtype=torch.float32))
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    out = torch.einsum("bkgqs,bskh->bqkgh", probs, v)  # [B, Lq, K, G, hd]
    return out.reshape(B, Lq, N * hd)


# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------


class GemmaRMSNorm(nn.Module):
    """Gemma RMSNorm: rms(x) * (1 + weight); ``weight`` is the raw checkpoint value (zero-init)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        y = rms_normalize(x, self.eps) * (1.0 + self.weight.float())
        return y.to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """adaRMS: dense(cond) -> (scale, shift, gate); returns (rms(x)*(1+scale)+shift, gate).

    ``dense``: Linear(dim -> 3*dim), [scale | shift | gate] along the output axis."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if cond is None:
            raise ValueError("AdaRMSNorm needs a conditioning vector")
        mod = self.dense(cond).float()  # [B, 3D]
        scale, shift, gate = torch.chunk(mod[:, None, :], 3, dim=-1)  # each [B, 1, D]
        y = rms_normalize(x, self.eps) * (1.0 + scale) + shift
        return y.to(x.dtype), gate.to(x.dtype)


class GemmaLayer(nn.Module):
    """One Gemma decoder layer's weights (attention projections, norms, GeGLU MLP)."""

    def __init__(self, width: int, mlp: int, cfg: Pi05Config, adaptive: bool) -> None:
        super().__init__()
        norm = AdaRMSNorm if adaptive else GemmaRMSNorm
        self.input_layernorm = norm(width, cfg.rms_eps)
        self.q_proj = nn.Linear(width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, width, bias=False)
        self.post_attention_layernorm = norm(width, cfg.rms_eps)
        self.gate_proj = nn.Linear(width, mlp, bias=False)
        self.up_proj = nn.Linear(width, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, width, bias=False)

    def mlp(self, x: Tensor) -> Tensor:
        return self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))


class GemmaStack(nn.Module):
    """A stack of Gemma layers plus the final norm (and the token embedding for the LM)."""

    def __init__(self, width: int, mlp: int, cfg: Pi05Config, adaptive: bool, vocab: int | None) -> None:
        super().__init__()
        self.width = width
        self.embed_tokens = nn.Embedding(vocab, width) if vocab is not None else None
        self.layers = nn.ModuleList([GemmaLayer(width, mlp, cfg, adaptive) for _ in range(cfg.lm_depth)])
        self.norm = (AdaRMSNorm if adaptive else GemmaRMSNorm)(width, cfg.rms_eps)


class SiglipBlock(nn.Module):
    def __init__(self, cfg: Pi05Config) -> None:
        super().__init__()
        w = cfg.vision_width
        self.layer_norm1 = nn.LayerNorm(w, eps=cfg.vision_ln_eps)
        self.q_proj = nn.Linear(w, w)
        self.k_proj = nn.Linear(w, w)
        self.v_proj = nn.Linear(w, w)
        self.out_proj = nn.Linear(w, w)
        self.layer_norm2 = nn.LayerNorm(w, eps=cfg.vision_ln_eps)
        self.fc1 = nn.Linear(w, cfg.vision_mlp)
        self.fc2 = nn.Linear(cfg.vision_mlp, w)
        self.heads = cfg.vision_heads

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, P, W] -> [N, P, W]."""
        n, p, w = x.shape
        hd = w // self.heads
        h = self.layer_norm1(x)
        q = self.q_proj(h).reshape(n, p, self.heads, hd).transpose(1, 2)
        k = self.k_proj(h).reshape(n, p, self.heads, hd).transpose(1, 2)
        v = self.v_proj(h).reshape(n, p, self.heads, hd).transpose(1, 2)
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (hd**-0.5)
        a = torch.matmul(torch.softmax(logits, dim=-1).to(v.dtype), v)  # [N, heads, P, hd]
        x = x + self.out_proj(a.transpose(1, 2).reshape(n, p, w))
        h = self.layer_norm2(x)
        return x + self.fc2(gelu_tanh(self.fc1(h)))


class SiglipVision(nn.Module):
    def __init__(self, cfg: Pi05Config) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.vision_width, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(cfg.num_patches, cfg.vision_width))
        self.layers = nn.ModuleList([SiglipBlock(cfg) for _ in range(cfg.vision_depth)])
        self.post_layernorm = nn.LayerNorm(cfg.vision_width, eps=cfg.vision_ln_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels: [N, 3, S, S] in [-1, 1] -> [N, P, vision_width] (patches row-major)."""
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [N, P, W]
        x = x + self.position_embedding[None].to(x.dtype)
        for blk in self.layers:
            x = blk(x)
        return self.post_layernorm(x)


@dataclass
class PrefixCache:
    """What the expert needs from the prefix pass.

    keys/values: per LM layer [B, Lp, num_kv_heads, head_dim] (keys after RoPE);
    pad_mask: [B, Lp] bool (valid prefix tokens)."""

    keys: list[Tensor]
    values: list[Tensor]
    pad_mask: Tensor


# ------------------------------------------------------------------------------------------------
# the policy
# ------------------------------------------------------------------------------------------------


class Pi05Model(nn.Module):
    """π₀.₅ flow-matching policy.  All inputs are already preprocessed (``pi05.preprocess``):

    images [B, C, 3, S, S] float in [-1, 1]; image_masks [B, C] bool; tokens [B, T] int64;
    token_masks [B, T] bool; actions / noise / x_t [B, H, A] (normalised, padded to A); t [B] in [0, 1].
    """

    def __init__(self, config: Pi05Config) -> None:
        super().__init__()
        self.config = config
        c = config
        self.vision = SiglipVision(c)
        self.projector = nn.Linear(c.vision_width, c.lm_width)
        self.lm = GemmaStack(c.lm_width, c.lm_mlp, c, adaptive=False, vocab=c.vocab_size)
        self.expert = GemmaStack(c.expert_width, c.expert_mlp, c, adaptive=True, vocab=None)
        self.action_in_proj = nn.Linear(c.action_dim, c.expert_width)
        self.action_out_proj = nn.Linear(c.expert_width, c.action_dim)
        self.time_mlp_in = nn.Linear(c.expert_width, c.expert_width)
        self.time_mlp_out = nn.Linear(c.expert_width, c.expert_width)

    # --- init ------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_random(self, seed: int = 0, std: float = 0.02, norm_std: float = 0.1) -> Pi05Model:
        """Deterministic random weights for tests/benchmarks (in place on this fresh module).

        Linear/conv weights ~ N(0, 1/fan_in) (unit gain, so every path, the time conditioning
        included, visibly affects the output — unlike the real zero-init adaRMS kernels); biases and
        position embeddings ~ N(0, std); token embeddings ~ N(0, 1/lm_width) (unit after the
        sqrt(width) scale); LayerNorm weights 1 + N(0, norm_std); Gemma norm weights N(0, norm_std)."""
        g = torch.Generator().manual_seed(seed)
        for module in self.modules():
            for pname, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g)
                if isinstance(module, nn.LayerNorm):
                    p.copy_((1.0 if pname == "weight" else 0.0) + norm_std * noise)
                elif isinstance(module, GemmaRMSNorm):
                    p.copy_(norm_std * noise)
                elif isinstance(module, nn.Embedding):
                    p.copy_(noise / math.sqrt(p.shape[1]))
                elif isinstance(module, (nn.Linear, nn.Conv2d)) and pname == "weight":
                    p.copy_(noise / math.sqrt(p[0].numel()))
                else:
                    p.copy_(std * noise)
        return self

    # --- prefix ------------------------------------------------------------------------------------
    def embed_images(self, images: Tensor) -> Tensor:
        """images [B, C, 3, S, S] -> per-camera projected embeddings [B, C, P, lm_width]."""
        B, C = images.shape[:2]
        feats = self.vision(images.reshape(B * C, *images.shape[2:]).to(self.projector.weight.dtype))
        emb = self.projector(feats)  # [B*C, P, D]
        return emb.reshape(B, C, emb.shape[1], emb.shape[2])

    def embed_prefix(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Embed the prefix: image tokens of every camera slot (ar=0), then scaled text embeddings (ar=0).

        Returns (prefix_emb [B, Lp, lm_width], pad_mask [B, Lp] bool, ar_mask [B, Lp] bool,
        image_emb [B, C, P, lm_width])."""
        c = self.config
        B, C = images.shape[:2]
        if C != c.num_cameras or images.shape[2:] != (3, c.image_size, c.image_size):
            raise ValueError(
                f"images must be [B, {c.num_cameras}, 3, {c.image_size}, {c.image_size}], got {tuple(images.shape)}"
            )
        if tokens.shape[-1] != c.max_token_len:
            raise ValueError(f"tokens must be [B, {c.max_token_len}], got {tuple(tokens.shape)}")
        img = self.embed_images(images)  # [B, C, P, D]
        P = img.shape[2]
        img_mask = image_masks.to(torch.bool)[:, :, None].expand(B, C, P).reshape(B, C * P)
        txt = self.lm.embed_tokens(tokens.to(torch.int64)) * torch.tensor(c.embed_scale, dtype=img.dtype)
        emb = torch.cat([img.reshape(B, C * P, -1), txt], dim=1)
        pad = torch.cat([img_mask, token_masks.to(torch.bool)], dim=1)
        ar = torch.zeros_like(pad)
        return emb, pad, ar, img

    # --- joint transformer --------------------------------------------------------------------------
    def _qkv(self, layer: GemmaLayer, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, D] (normed) -> q [B, L, N, hd] (RoPE, scaled), k [B, L, K, hd] (RoPE), v [B, L, K, hd]."""
        c = self.config
        B, L, _ = x.shape
        q = layer.q_proj(x).reshape(B, L, c.num_heads, c.head_dim)
        k = layer.k_proj(x).reshape(B, L, c.num_kv_heads, c.head_dim)
        v = layer.v_proj(x).reshape(B, L, c.num_kv_heads, c.head_dim)
        q = apply_rope(q, positions, c.rope_theta) * (c.head_dim**-0.5)
        k = apply_rope(k, positions, c.rope_theta)
        return q, k, v

    def joint_forward(
        self,
        streams: list[Tensor | None],
        mask: Tensor,
        positions: Tensor,
        cond: Tensor | None,
        past: PrefixCache | None = None,
        collect_kv: bool = False,
        kv_only: bool = False,
    ) -> tuple[list[Tensor | None], list[Tensor], list[Tensor]]:
        """Run all layers over the [LM stream, expert stream] jointly.

        streams: [prefix hidden [B, Lp, lm_width] or None, suffix hidden [B, Ls, ex_width] or None];
        mask: [B, L_query, L_key] bool over the concatenated queries of the present streams and keys
        [cached prefix keys (if past)] + present streams; positions: [B, L_query];
        cond: [B, ex_width] adaRMS condition (needed when the expert stream is present);
        past: cached prefix K/V (the prefix stream must then be None).
        kv_only: stop once the last layer's K/V are collected (its attention output, MLP and the
        final norm are skipped: nothing reads them for a prefix-only pass); hidden outputs are None.
        Returns (final hidden per stream after its final norm, keys per layer, values per layer) —
        keys/values of the present streams, collected when ``collect_kv``."""
        stacks = [self.lm, self.expert]
        present = [i for i, h in enumerate(streams) if h is not None]
        lens = [streams[i].shape[1] for i in present]
        hs = list(streams)
        keys_out: list[Tensor] = []
        values_out: list[Tensor] = []
        for li in range(self.config.lm_depth):
            qs, ks, vs, gates = [], [], [], {}
            offset = 0
            for i, n in zip(present, lens):
                layer = stacks[i].layers[li]
                normed, gate = layer.input_layernorm(hs[i], cond if i == 1 else None)
                gates[i] = gate
                q, k, v = self._qkv(layer, normed, positions[:, offset : offset + n])
                qs.append(q)
                ks.append(k)
                vs.append(v)
                offset += n
            q = torch.cat(qs, dim=1)
            k = torch.cat(ks, dim=1)
            v = torch.cat(vs, dim=1)
            if collect_kv:
                keys_out.append(k)
                values_out.append(v)
            if kv_only and li == self.config.lm_depth - 1:
                return [None, None], keys_out, values_out
            if past is not None:
                k = torch.cat([past.keys[li].to(k.dtype), k], dim=1)
                v = torch.cat([past.values[li].to(v.dtype), v], dim=1)
            att = attention(q, k, v, mask)  # [B, Lq, N*hd]
            offset = 0
            for i, n in zip(present, lens):
                layer = stacks[i].layers[li]
                y = layer.o_proj(att[:, offset : offset + n])
                offset += n
                h = hs[i] + (y * gates[i] if gates[i] is not None else y)
                normed, gate = layer.post_attention_layernorm(h, cond if i == 1 else None)
                y = layer.mlp(normed)
                hs[i] = h + (y * gate if gate is not None else y)
        outs: list[Tensor | None] = [None, None]
        for i in present:
            outs[i], _ = stacks[i].norm(hs[i], cond if i == 1 else None)
        return outs, keys_out, values_out

    def compute_prefix_kv(
        self,
        images: Tensor,
        image_masks: Tensor,
        tokens: Tensor,
        token_masks: Tensor,
        intermediates: dict[str, Tensor] | None = None,
    ) -> PrefixCache:
        """Run the prefix once through the LM; return its per-layer K (after RoPE) and V.

        Prefix tokens never attend to the suffix, so these equal the prefix K/V of a joint forward."""
        emb, pad, ar, img = self.embed_prefix(images, image_masks, tokens, token_masks)
        mask = make_attn_mask(pad, ar)
        positions = torch.cumsum(pad.to(torch.int64), dim=1) - 1
        _, keys, values = self.joint_forward([emb, None], mask, positions, None, collect_kv=True, kv_only=True)
        if intermediates is not None:
            for cam in range(img.shape[1]):
                intermediates[PI05_INTER_VISION.format(cam=cam)] = img[:, cam]
            intermediates[PI05_INTER_PREFIX_EMB] = emb
            for li, (k, v) in enumerate(zip(keys, values)):
                intermediates[PI05_INTER_PREFIX_K.format(i=li)] = k
                intermediates[PI05_INTER_PREFIX_V.format(i=li)] = v
        return PrefixCache(keys, values, pad)

    # --- suffix / expert ----------------------------------------------------------------------------
    def time_condition(self, t: Tensor) -> Tensor:
        """t [B] -> adaRMS condition [B, ex_width]."""
        c = self.config
        emb = posemb_sincos(t, c.expert_width, c.time_min_period, c.time_max_period).to(self.time_mlp_in.weight.dtype)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))

    def _suffix_masks(self, prefix_pad: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
        """(mask [B, H, Lp + H], positions [B, H]) for the action tokens attending to the prefix."""
        B = prefix_pad.shape[0]
        dev = prefix_pad.device
        suf_pad = torch.ones(B, horizon, dtype=torch.bool, device=dev)
        suf_ar = torch.zeros(B, horizon, dtype=torch.bool, device=dev)
        suf_ar[:, 0] = True
        s2s = make_attn_mask(suf_pad, suf_ar)  # [B, H, H]
        s2p = prefix_pad[:, None, :].expand(B, horizon, prefix_pad.shape[1])
        mask = torch.cat([s2p, s2s], dim=2)
        positions = prefix_pad.to(torch.int64).sum(dim=1, keepdim=True) + torch.cumsum(suf_pad.to(torch.int64), 1) - 1
        return mask, positions

    def denoise_step(self, kv_cache: PrefixCache, prefix_mask: Tensor | None, x_t: Tensor, t: Tensor) -> Tensor:
        """One velocity evaluation: x_t [B, H, A], t [B] -> v_t [B, H, A].

        Only the suffix runs (through the expert), attending to the cached prefix K/V.  ``prefix_mask``
        [B, Lp] overrides ``kv_cache.pad_mask`` when given."""
        pad = kv_cache.pad_mask if prefix_mask is None else prefix_mask.to(torch.bool)
        cond = self.time_condition(t)
        suffix = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        mask, positions = self._suffix_masks(pad, x_t.shape[1])
        outs, _, _ = self.joint_forward([None, suffix], mask, positions, cond, past=kv_cache)
        return self.action_out_proj(outs[1])

    def joint_velocity(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor, x_t: Tensor, t: Tensor
    ) -> Tensor:
        """Velocity from ONE joint forward of prefix and suffix (no cache), as in training.

        Returns v_t [B, H, A].  Equals ``denoise_step(compute_prefix_kv(...), None, x_t, t)``."""
        emb, pad, ar, _ = self.embed_prefix(images, image_masks, tokens, token_masks)
        B, H = x_t.shape[:2]
        suffix = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        suf_pad = torch.ones(B, H, dtype=torch.bool, device=pad.device)
        suf_ar = torch.zeros(B, H, dtype=torch.bool, device=pad.device)
        suf_ar[:, 0] = True
        full_pad = torch.cat([pad, suf_pad], dim=1)
        mask = make_attn_mask(full_pad, torch.cat([ar, suf_ar], dim=1))
        positions = torch.cumsum(full_pad.to(torch.int64), dim=1) - 1
        cond = self.time_condition(t)
        outs, _, _ = self.joint_forward([emb, suffix], mask, positions, cond)
        return self.action_out_proj(outs[1])

    # --- sampling and training ----------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        images: Tensor,
        image_masks: Tensor,
        tokens: Tensor,
        token_masks: Tensor,
        noise: Tensor,
        return_intermediates: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching sampling: prefix once, then ``num_steps`` Euler steps from t=1 (noise) to 0.

        noise: [B, H, A].  Returns actions [B, H, A] (normalised, padded), and with
        ``return_intermediates`` also a dict of named tensors (``PI05_INTER_*`` names)."""
        c = self.config
        if noise.shape[1:] != (c.action_horizon, c.action_dim):
            raise ValueError(f"noise must be [B, {c.action_horizon}, {c.action_dim}], got {tuple(noise.shape)}")
        inter: dict[str, Tensor] | None = {} if return_intermediates else None
        cache = self.compute_prefix_kv(images, image_masks, tokens, token_masks, intermediates=inter)
        dt = -1.0 / c.num_steps
        x = noise.to(self.action_in_proj.weight.dtype)
        B = x.shape[0]
        for s in range(c.num_steps):
            t = torch.full((B,), 1.0 + s * dt, dtype=torch.float32, device=x.device)
            v = self.denoise_step(cache, None, x, t)
            if inter is not None:
                inter[PI05_INTER_X_T.format(s=s)] = x
                inter[PI05_INTER_TIME_COND.format(s=s)] = self.time_condition(t)
                inter[PI05_INTER_VELOCITY.format(s=s)] = v
            x = x + dt * v
        if inter is not None:
            inter[PI05_INTER_ACTIONS] = x
            return x, inter
        return x

    def flow_matching_loss(
        self,
        batch: dict[str, Tensor],
        noise: Tensor | None = None,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
        loss_action_dims: int | None = None,
    ) -> Tensor:
        """Flow-matching MSE.  batch: images, image_masks, tokens, token_masks, actions [B, H, A].

        t ~ Beta(1.5, 1) * 0.999 + 0.001 (sampled exactly by inverse CDF u^(1/1.5)) unless given;
        x_t = t*noise + (1-t)*actions; target u = noise - actions; loss = (v(x_t, t) - u)^2.
        reduction "mean" -> scalar; "none" -> [B, H, A].  ``loss_action_dims`` restricts the loss to
        the first that many action dims (the un-padded ones)."""
        actions = batch["actions"]
        B = actions.shape[0]
        if noise is None:
            noise = torch.randn(actions.shape, generator=generator, dtype=actions.dtype)
        if t is None:
            u = torch.rand((B,), generator=generator)
            t = u.pow(1.0 / 1.5) * 0.999 + 0.001
        te = t.to(actions.dtype)[:, None, None]
        x_t = te * noise + (1.0 - te) * actions
        target = noise - actions
        v = self.joint_velocity(
            batch["images"], batch["image_masks"], batch["tokens"], batch["token_masks"], x_t, t
        )
        err = (v.float() - target.float()).pow(2)
        if loss_action_dims is not None:
            err = err[..., :loss_action_dims]
        if reduction == "none":
            return err
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        return err.mean()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
