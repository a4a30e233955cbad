"""OpenVLA-OFT PyTorch reference model (our own implementation; plain torch modules, no timm/transformers).

Architecture (/work/shared/reference/openvla-oft.md; moojink/openvla-oft ``modeling_prismatic.py``,
``action_heads.py``, ``projectors.py``, ``film_vit_wrapper.py``):

- Two timm ViTs per image, both pre-LN (LayerNorm with bias, fused qkv with bias, exact-erf GELU MLP):
  DINOv2 (cls + ``dino_registers`` register tokens in front of the patches, position embedding on the
  patches only, LayerScale ``ls1``/``ls2``) and SigLIP (patches only, no LayerScale).  Features are the
  output of block ``depth-2`` (timm ``get_intermediate_layers(n={depth-2})``: no final norm), prefix
  tokens dropped: [P, dino_width] and [P, siglip_width], concatenated channel-wise per image; the
  images' tokens follow each other along the sequence.
- Optional FiLM (OFT+): every block of both ViTs does ``x = x + attn(norm1 x)``, then
  ``x = x * (1 + scale(c)) + shift(c)``, then ``x = x + mlp(norm2 x)``; c = mean embedding of the
  non-action, non-pad text tokens.
- Fused GELU projector fc1 -> GELU -> fc2 -> GELU -> fc3; proprio projector fc1 -> GELU -> fc2 (one token).
- Llama-2 decoder: RMSNorm (fp32), split-half RoPE at positions arange(L), MHA/GQA, SwiGLU; attention is
  bidirectional over the whole sequence, only pad keys are masked (the OFT transformers fork).
- Sequence: [BOS][image tokens][proprio][prompt tokens after BOS][chunk*action_dim placeholders][stop]
  (+ right pads in a batch); placeholder embeddings are zeroed.
- L1 head (MLP-ResNet) on the final-normed hidden states of the placeholder slots reshaped to
  [B, chunk, action_dim * lm_width]: LN -> fc1 -> ReLU -> blocks (x + ReLU(fc(LN x))) -> LN -> fc2.
- Losses: L1 on the head's actions and next-token NLL of discretised action tokens through ``lm_head``
  (the token at slot p is predicted from the logits at p-1).

Shapes: B batch, I images, P patches per image, T text tokens, L = 1 + I*P + (1 if proprio) + T - 1.
Named intermediates: ``actquant_core.constants.OFT_INTER_*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actquant_core.constants import (
    OFT_INTER_ACTION_HIDDEN,
    OFT_INTER_ACTIONS,
    OFT_INTER_DINO,
    OFT_INTER_FILM_COND,
    OFT_INTER_INPUT_EMB,
    OFT_INTER_PROJECTOR,
    OFT_INTER_PROPRIO,
    OFT_INTER_SIGLIP,
)
from actquant_core.policies.openvla_oft.config import OftConfig
from actquant_core.policies.pi05.model import apply_rope, attention, rms_normalize


def _gelu(x: Tensor, mode: str) -> Tensor:
    return F.gelu(x, approximate="tanh" if mode == "tanh" else "none")


class VitBlock(nn.Module):
    """timm ViT block (pre-LN), optional LayerScale and FiLM."""

    def __init__(self, width: int, heads: int, mlp: int, eps: float, layerscale: bool, gelu: str,
                 film_dim: int | None) -> None:
        super().__init__()
        self.heads = heads
        self.gelu = gelu
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ls1 = nn.Parameter(torch.ones(width)) if layerscale else None
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)
        self.ls2 = nn.Parameter(torch.ones(width)) if layerscale else None
        self.film_scale = nn.Linear(film_dim, width) if film_dim else None
        self.film_shift = nn.Linear(film_dim, width) if film_dim else None

    def forward(self, x: Tensor, film_cond: Tensor | None = None) -> Tensor:
        """x [N, T, W]; film_cond [N, film_dim] (FiLM blocks only) -> [N, T, W]."""
        n, t, w = x.shape
        hd = w // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)  # [3, N, H, T, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (hd**-0.5)
        a = torch.matmul(torch.softmax(logits, dim=-1).to(v.dtype), v)  # [N, H, T, hd]
        y = self.proj(a.transpose(1, 2).reshape(n, t, w))
        x = x + (y * self.ls1 if self.ls1 is not None else y)
        if self.film_scale is not None:
            if film_cond is None:
                raise ValueError("a FiLM ViT block needs the language conditioning vector")
            gamma = self.film_scale(film_cond)[:, None, :]
            beta = self.film_shift(film_cond)[:, None, :]
            x = x * (1.0 + gamma) + beta
        y = self.fc2(_gelu(self.fc1(self.norm2(x)), self.gelu))
        return x + (y * self.ls2 if self.ls2 is not None else y)


class Vit(nn.Module):
    """A timm ViT truncated after the block that feeds the features (depth - 1 blocks held)."""

    def __init__(self, cfg: OftConfig, width: int, depth: int, heads: int, mlp: int, registers: int,
                 cls_token: bool, layerscale: bool, gelu: str) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.num_patches, width))
        self.cls_token = nn.Parameter(torch.zeros(width)) if cls_token else None
        self.reg_token = nn.Parameter(torch.zeros(registers, width)) if registers else None
        film = cfg.lm_width if cfg.use_film else None
        self.blocks = nn.ModuleList(
            [VitBlock(width, heads, mlp, cfg.vit_ln_eps, layerscale, gelu, film) for _ in range(depth - 1)]
        )
        self.num_prefix = (1 if cls_token else 0) + registers

    def forward(self, pixels: Tensor, film_cond: Tensor | None = None) -> Tensor:
        """pixels [N, 3, S, S] (normalised) -> patch features [N, P, W] of the second-to-last block."""
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [N, P, W]
        x = x + self.pos_embed[None].to(x.dtype)
        n = x.shape[0]
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.to(x.dtype).expand(n, 1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.to(x.dtype).expand(n, -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        for blk in self.blocks:
            x = blk(x, film_cond)
        return x[:, self.num_prefix :]


class LlamaLayer(nn.Module):
    def __init__(self, cfg: OftConfig) -> None:
        super().__init__()
        d, hd = cfg.lm_width, cfg.head_dim
        self.input_layernorm = nn.Parameter(torch.ones(d))
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(d))
        self.gate_proj = nn.Linear(d, cfg.lm_mlp, bias=False)
        self.up_proj = nn.Linear(d, cfg.lm_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.lm_mlp, d, bias=False)


def llama_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)) computed in fp32, cast back."""
    return weight * rms_normalize(x, eps).to(x.dtype)


class MlpResNet(nn.Module):
    """L1RegressionActionHead.model: LN -> fc1 -> ReLU -> [x + ReLU(fc(LN x))] * blocks -> LN -> fc2."""

    def __init__(self, cfg: OftConfig) -> None:
        super().__init__()
        din = cfg.action_dim * cfg.lm_width
        self.layer_norm1 = nn.LayerNorm(din, eps=cfg.head_ln_eps)
        self.fc1 = nn.Linear(din, cfg.head_hidden)
        self.block_norms = nn.ModuleList([nn.LayerNorm(cfg.head_hidden, eps=cfg.head_ln_eps) for _ in range(cfg.head_blocks)])
        self.block_fcs = nn.ModuleList([nn.Linear(cfg.head_hidden, cfg.head_hidden) for _ in range(cfg.head_blocks)])
        self.layer_norm2 = nn.LayerNorm(cfg.head_hidden, eps=cfg.head_ln_eps)
        self.fc2 = nn.Linear(cfg.head_hidden, cfg.action_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, chunk, action_dim*lm_width] -> actions [B, chunk, action_dim]."""
        x = F.relu(self.fc1(self.layer_norm1(x)))
        for ln, fc in zip(self.block_norms, self.block_fcs):
            x = x + F.relu(fc(ln(x)))
        return self.fc2(self.layer_norm2(x))


class OftModel(nn.Module):
    """OpenVLA-OFT policy.  Inputs are already preprocessed (``openvla_oft.preprocess``):

    pixels [B, 6*I, S, S] (per image: 3 DINO-normalised then 3 SigLIP-normalised channels);
    proprio [B, proprio_dim] (bounds_q99-normalised); input_ids [B, T] int64 = BOS, prompt, placeholders,
    stop, right pads; attention_mask [B, T] bool (False on pads); action_mask [B, T] bool (True on the
    chunk*action_dim placeholder slots, in order).
    """

    def __init__(self, config: OftConfig) -> None:
        super().__init__()
        self.config = c = config
        self.dino = Vit(c, c.dino_width, c.dino_depth, c.dino_heads, c.dino_mlp, c.dino_registers,
                        cls_token=True, layerscale=True, gelu="erf")
        self.siglip = Vit(c, c.siglip_width, c.siglip_depth, c.siglip_heads, c.siglip_mlp, 0,
                          cls_token=False, layerscale=False, gelu=c.siglip_gelu)
        self.proj_fc1 = nn.Linear(c.vision_dim, c.projector_hidden)
        self.proj_fc2 = nn.Linear(c.projector_hidden, c.lm_width)
        self.proj_fc3 = nn.Linear(c.lm_width, c.lm_width)
        self.proprio_fc1 = nn.Linear(c.proprio_dim, c.lm_width) if c.use_proprio else None
        self.proprio_fc2 = nn.Linear(c.lm_width, c.lm_width) if c.use_proprio else None
        self.embed_tokens = nn.Embedding(c.vocab_size, c.lm_width)
        self.layers = nn.ModuleList([LlamaLayer(c) for _ in range(c.lm_depth)])
        self.norm = nn.Parameter(torch.ones(c.lm_width))
        self.lm_head = nn.Linear(c.lm_width, c.vocab_size, bias=False)
        self.action_head = MlpResNet(c)

    # --- init ------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_random(self, seed: int = 0, std: float = 0.02, norm_std: float = 0.1) -> OftModel:
        """Deterministic random weights for tests/benchmarks (in place on this fresh module).

        Linear/conv weights ~ N(0, 1/fan_in) (FiLM ones scaled by 0.3); biases, position embeddings,
        cls/register tokens ~ N(0, std) (tokens N(0, 1)); norm weights and LayerScale 1 + N(0, norm_std);
        token embeddings ~ N(0, 1)."""
        g = torch.Generator().manual_seed(seed)
        for mname, module in self.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g)
                if isinstance(module, nn.LayerNorm):
                    p.copy_((1.0 if pname == "weight" else 0.0) + norm_std * noise)
                elif pname in ("ls1", "ls2", "input_layernorm", "post_attention_layernorm", "norm"):
                    p.copy_(1.0 + norm_std * noise)
                elif isinstance(module, nn.Embedding) or pname in ("cls_token", "reg_token"):
                    p.copy_(noise)
                elif isinstance(module, (nn.Linear, nn.Conv2d)) and pname == "weight":
                    gain = 0.3 if mname.endswith(("film_scale", "film_shift")) else 1.0
                    p.copy_(gain * noise / math.sqrt(p[0].numel()))
                else:
                    p.copy_(std * noise)
        return self

    # --- vision ------------------------------------------------------------------------------------
    def vision_features(self, pixels: Tensor, film_cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """pixels [B, 6*I, S, S] -> (dino [B, I, P, dw], siglip [B, I, P, sw])."""
        c = self.config
        B = pixels.shape[0]
        if pixels.shape[1:] != (6 * c.num_images, c.image_size, c.image_size):
            raise ValueError(
                f"pixels must be [B, {6 * c.num_images}, {c.image_size}, {c.image_size}], got {tuple(pixels.shape)}"
            )
        if c.use_film and film_cond is None:
            raise ValueError("use_film needs film_cond [B, lm_width]")
        px = pixels.reshape(B, c.num_images, 2, 3, c.image_size, c.image_size).to(self.proj_fc1.weight.dtype)
        cond = None if film_cond is None else film_cond.repeat_interleave(c.num_images, dim=0)
        dino = self.dino(px[:, :, 0].reshape(B * c.num_images, 3, c.image_size, c.image_size), cond)
        sig = self.siglip(px[:, :, 1].reshape(B * c.num_images, 3, c.image_size, c.image_size), cond)
        return dino.reshape(B, c.num_images, *dino.shape[1:]), sig.reshape(B, c.num_images, *sig.shape[1:])

    def project(self, dino: Tensor, siglip: Tensor) -> Tensor:
        """Fused GELU MLP on [dino | siglip] per token: [B, I, P, *] -> [B, I*P, lm_width]."""
        x = torch.cat([dino, siglip], dim=-1).flatten(1, 2)
        x = F.gelu(self.proj_fc1(x))
        x = F.gelu(self.proj_fc2(x))
        return self.proj_fc3(x)

    def proprio_token(self, proprio: Tensor) -> Tensor:
        """proprio [B, proprio_dim] -> [B, lm_width]."""
        if proprio.shape[-1] != self.config.proprio_dim:
            raise ValueError(f"proprio must be [B, {self.config.proprio_dim}], got {tuple(proprio.shape)}")
        return self.proprio_fc2(F.gelu(self.proprio_fc1(proprio.to(self.proprio_fc1.weight.dtype))))

    # --- sequence ------------------------------------------------------------------------------------
    def film_condition(self, input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor) -> Tensor:
        """Mean token embedding over the non-action, non-pad text tokens: [B, lm_width]."""
        emb = self.embed_tokens(input_ids.to(torch.int64))
        keep = (attention_mask.to(torch.bool) & ~action_mask.to(torch.bool)).to(emb.dtype)[..., None]
        return (emb * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)

    def embed(
        self,
        pixels: Tensor,
        proprio: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor,
        action_mask: Tensor,
        intermediates: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Build the multimodal sequence.

        Returns (emb [B, L, D], pad mask [B, L] bool, action slot indices [B, chunk*action_dim] into L)."""
        c = self.config
        B, T = input_ids.shape
        attention_mask = attention_mask.to(torch.bool)
        action_mask = action_mask.to(torch.bool)
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= c.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {c.vocab_size}), got [{int(input_ids.min())}, {int(input_ids.max())}]")
        counts = action_mask.sum(dim=1)
        if not bool((counts == c.num_action_tokens).all()):
            raise ValueError(f"action_mask must mark {c.num_action_tokens} slots per row, got {counts.tolist()}")
        if bool(action_mask[:, 0].any()):
            raise ValueError("action_mask must be False at position 0 (BOS)")
        film = self.film_condition(input_ids, attention_mask, action_mask) if c.use_film else None
        dino, sig = self.vision_features(pixels, film)
        vis = self.project(dino, sig)  # [B, I*P, D]
        parts = [vis]
        if c.use_proprio:
            if proprio is None:
                raise ValueError("use_proprio needs proprio [B, proprio_dim]")
            pt = self.proprio_token(proprio)
            parts.append(pt[:, None, :])
        vis_tok = torch.cat(parts, dim=1)
        txt = self.embed_tokens(input_ids.to(torch.int64)) * (~action_mask).to(vis.dtype)[..., None]
        emb = torch.cat([txt[:, :1], vis_tok, txt[:, 1:]], dim=1)
        nv = vis_tok.shape[1]
        ones = torch.ones(B, nv, dtype=torch.bool, device=attention_mask.device)
        pad = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        slots = torch.stack([torch.nonzero(row, as_tuple=False)[:, 0] for row in action_mask]) + nv  # [B, n_act]
        if intermediates is not None:
            for i in range(c.num_images):
                intermediates[OFT_INTER_DINO.format(img=i)] = dino[:, i]
                intermediates[OFT_INTER_SIGLIP.format(img=i)] = sig[:, i]
            intermediates[OFT_INTER_PROJECTOR] = vis
            if c.use_proprio:
                intermediates[OFT_INTER_PROPRIO] = pt
            if film is not None:
                intermediates[OFT_INTER_FILM_COND] = film
            intermediates[OFT_INTER_INPUT_EMB] = emb
        return emb, pad, slots

    # --- decoder -----------------------------------------------------------------------------------------
    def decode(self, emb: Tensor, pad: Tensor) -> Tensor:
        """Bidirectional Llama over emb [B, L, D] with pad keys masked; returns final-normed hidden [B, L, D]."""
        c = self.config
        B, L, _ = emb.shape
        positions = torch.arange(L, device=emb.device)[None].expand(B, L)
        mask = pad[:, None, :].expand(B, L, L)  # every query sees every non-pad key
        x = emb
        hd = c.head_dim
        for layer in self.layers:
            h = llama_rms_norm(x, layer.input_layernorm, c.rms_eps)
            q = layer.q_proj(h).reshape(B, L, c.num_heads, hd)
            k = layer.k_proj(h).reshape(B, L, c.num_kv_heads, hd)
            v = layer.v_proj(h).reshape(B, L, c.num_kv_heads, hd)
            q = apply_rope(q, positions, c.rope_theta) * (hd**-0.5)
            k = apply_rope(k, positions, c.rope_theta)
            x = x + layer.o_proj(attention(q, k, v, mask))
            h = llama_rms_norm(x, layer.post_attention_layernorm, c.rms_eps)
            x = x + layer.down_proj(F.silu(layer.gate_proj(h)) * layer.up_proj(h))
        return llama_rms_norm(x, self.norm, c.rms_eps)

    def forward_hidden(
        self, pixels: Tensor, proprio: Tensor | None, input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor,
        intermediates: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(final hidden [B, L, D], action slot indices [B, n_act])."""
        emb, pad, slots = self.embed(pixels, proprio, input_ids, attention_mask, action_mask, intermediates)
        return self.decode(emb, pad), slots

    def action_head_forward(self, hidden: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """(action hidden [B, n_act, D], actions [B, chunk, action_dim])."""
        c = self.config
        B = hidden.shape[0]
        ah = torch.gather(hidden, 1, slots[..., None].expand(B, slots.shape[1], hidden.shape[2]))
        return ah, self.action_head(ah.reshape(B, c.chunk, c.action_dim * c.lm_width))

    def predict_actions(
        self, pixels: Tensor, proprio: Tensor | None, input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor,
        return_intermediates: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """One parallel-decoding forward: normalised actions [B, chunk, action_dim] (+ named intermediates)."""
        inter: dict[str, Tensor] | None = {} if return_intermediates else None
        hidden, slots = self.forward_hidden(pixels, proprio, input_ids, attention_mask, action_mask, inter)
        ah, actions = self.action_head_forward(hidden, slots)
        if inter is None:
            return actions
        inter[OFT_INTER_ACTION_HIDDEN] = ah
        inter[OFT_INTER_ACTIONS] = actions
        return actions, inter

    # --- training losses ----------------------------------------------------------------------------------
    def losses(
        self, batch: dict[str, Tensor], reduction: str = "mean", with_nll: bool = True
    ) -> dict[str, Tensor]:
        """Training losses.  batch: pixels, proprio, input_ids, attention_mask, action_mask, actions
        [B, chunk, action_dim] (normalised) and, for the NLL term, action_token_ids [B, chunk*action_dim].

        Returns {"l1": |pred - actions| , "nll": -log p(action token at slot p | logits at p-1)};
        reduction "mean" -> scalars, "none" -> l1 [B, chunk, action_dim], nll [B, chunk*action_dim]."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        hidden, slots = self.forward_hidden(
            batch["pixels"], batch.get("proprio"), batch["input_ids"], batch["attention_mask"], batch["action_mask"]
        )
        _, pred = self.action_head_forward(hidden, slots)
        l1 = (pred.float() - batch["actions"].float()).abs()
        out = {"l1": l1.mean() if reduction == "mean" else l1}
        if with_nll:
            labels = batch["action_token_ids"].to(torch.int64)
            B = hidden.shape[0]
            prev = torch.gather(hidden, 1, (slots - 1)[..., None].expand(B, slots.shape[1], hidden.shape[2]))
            logits = self.lm_head(prev).float()  # [B, n_act, vocab]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
            nll = nll.reshape(labels.shape)
            out["nll"] = nll.mean() if reduction == "mean" else nll
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
