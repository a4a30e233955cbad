"""OpenVLA-OFT policy runtime: GGUF -> native GGML graph; numpy preprocessing shared with the torch reference.

No torch here: an edge computer needs numpy, OpenCV, SentencePiece and the native module only.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from actquant_core import constants as C
from actquant_core import native
from actquant_core.policies.openvla_oft.config import OftConfig
from actquant_core.policies.openvla_oft.preprocess import OftInputs, OftNormStats, OftPreprocessor
from actquant_core.runtime.header import read_policy_header
from actquant_core.runtime.native_handle import NativeHandle
from actquant_core.runtime.types import ActionChunk, Observation

log = logging.getLogger(__name__)


def oft_hparams(cfg: OftConfig) -> dict[str, Any]:
    """The native graph's hyper-parameters from the config (the GGUF's actquant.config_json)."""
    d = cfg.to_dict()
    keys = (
        "image_size patch_size num_images dino_width dino_depth dino_heads dino_mlp dino_registers siglip_width "
        "siglip_depth siglip_heads siglip_mlp vit_ln_eps use_film use_proprio projector_hidden lm_width lm_depth "
        "num_heads num_kv_heads lm_mlp vocab_size rms_eps rope_theta action_dim chunk proprio_dim head_hidden "
        "head_blocks head_ln_eps"
    ).split()
    h = {k: d[k] for k in keys}
    h["siglip_gelu_tanh"] = cfg.siglip_gelu == "tanh"
    return h


class OftRuntime(NativeHandle):
    """Loads an OpenVLA-OFT GGUF once; ``infer(obs) -> ActionChunk``.

    Args:
        gguf_path: a policy GGUF written by ``export_openvla_oft``.
        n_threads: CPU threads (default: the CPUs of this process).
        device: "cpu" | "cuda" | "cuda:N".
        tokenizer_path: SentencePiece model overriding the one embedded in the GGUF (required when the GGUF
            has none, e.g. real Llama-2 checkpoints exported without the user-supplied tokenizer).
        rotate_180, center_crop, gripper: preprocessing options (``OftPreprocessor``); LIBERO uses
            rotate_180=True, center_crop=True, gripper="libero".
        repack: CPU only: convert the weights GGML has interleaved GEMM kernels for at load (see
            ``native.Backend``); False runs from the memory-mapped file.
    """

    family = C.OFT_FAMILY

    def __init__(
        self,
        gguf_path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        device: str = "cpu",
        tokenizer_path: str | os.PathLike[str] | None = None,
        rotate_180: bool = False,
        center_crop: bool = True,
        gripper: str = "none",
        repack: bool = True,
    ) -> None:
        self.path = os.fspath(gguf_path)
        hdr = read_policy_header(self.path, C.OFT_FAMILY, OftConfig, OftNormStats, tokenizer_path, "Llama-2")
        self.config, self.norm_stats, self.plan_summary, self.file_size = (
            hdr.config, hdr.norm_stats, hdr.plan_summary, hdr.file_size)
        self.preprocessor = OftPreprocessor(
            self.config, hdr.tokenizer, self.norm_stats, rotate_180=rotate_180, center_crop=center_crop, gripper=gripper
        )
        self._rt = native.native_module().OftRuntime(
            self.path, oft_hparams(self.config), n_threads or native.default_threads(), device, repack
        )
        log.info("openvla_oft runtime: %s on %s (%.1f MB)", self.path, self._rt.backend, self.file_size / 1e6)

    def infer_model_inputs(
        self, inputs: OftInputs, collect: list[str] | tuple[str, ...] = ()
    ) -> tuple[np.ndarray, dict[str, float], dict[str, np.ndarray]]:
        """Native forward on already-preprocessed inputs (batch of one, no pads).

        Returns (normalised actions [chunk, action_dim], timing ms, named intermediates)."""
        c = self.config
        if inputs.pixels.shape[0] != 1:
            raise ValueError(f"the native runtime runs one observation at a time, got batch {inputs.pixels.shape[0]}")
        if not bool(inputs.attention_mask.all()):
            raise ValueError("the native runtime takes an unpadded token sequence (attention_mask all True)")
        n = c.num_action_tokens
        want = np.zeros(inputs.action_mask.shape[1], dtype=bool)
        want[-n - 1 : -1] = True
        if not np.array_equal(inputs.action_mask[0], want):
            raise ValueError(f"action_mask must mark the {n} slots before the final stop token")
        pixels = inputs.pixels[0].reshape(c.num_images, 6, c.image_size, c.image_size)
        return self._rt.infer(pixels, inputs.proprio[0], inputs.input_ids[0].astype(np.int32), list(collect))

    def reseed(self, seed) -> None:
        """No-op: OpenVLA-OFT's parallel decoding draws no noise (kept for the runtimes' common interface)."""

    def infer(self, obs: Observation) -> ActionChunk:
        """Observation (images by slot name, proprio in ``state``, instruction) -> unnormalised action chunk."""
        t0 = time.perf_counter()
        inputs = self.preprocessor(obs.images, obs.state, obs.instruction)
        t1 = time.perf_counter()
        actions, timing, _ = self.infer_model_inputs(inputs)
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError("openvla_oft: the policy produced non-finite actions")
        out = self.preprocessor.unnormalize_actions(actions)
        timing = dict(timing)
        timing["preprocess"] = (t1 - t0) * 1e3
        timing["total"] = (time.perf_counter() - t0) * 1e3
        return ActionChunk(actions=out, stamp=obs.stamp, timing_ms=timing)
