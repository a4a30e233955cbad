"""π₀.₅ policy runtime: GGUF -> native GGML graph; numpy preprocessing shared with the torch reference.

No torch here: an edge computer needs numpy, OpenCV, SentencePiece and the native module only.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from actquant_core import constants as C
from actquant_core import native
from actquant_core.policies.common.normalize import NormStats
from actquant_core.policies.pi05.config import Pi05Config
from actquant_core.policies.pi05.preprocess import Pi05Inputs, Pi05Preprocessor
from actquant_core.runtime.header import read_policy_header
from actquant_core.runtime.native_handle import NativeHandle
from actquant_core.runtime.types import ActionChunk, Observation

log = logging.getLogger(__name__)


class Pi05Runtime(NativeHandle):
    """Loads a π₀.₅ GGUF once; ``infer(obs) -> ActionChunk``.

    Args:
        gguf_path: a policy GGUF written by ``actquant export`` / ``actquant quantize``.
        n_threads: CPU threads (default: the CPUs of this process).
        device: "cpu" | "cuda" | "cuda:N".
        tokenizer_path: SentencePiece model overriding the one embedded in the GGUF (required when the GGUF
            has none, e.g. real PaliGemma checkpoints exported without the user-supplied tokenizer).
        seed: seed of the flow-matching noise (one generator per runtime: reproducible call sequences).
        repack: CPU only: convert the weights GGML has interleaved GEMM kernels for at load (see
            ``native.Backend``); False runs from the memory-mapped file.
        stage_timing: report "vision", "prefix" and "denoise" in each chunk's timing (default).  False runs the
            native graph in one piece (on CUDA one CUDA graph instead of three, with no synchronisation between
            the stages); the timing then has "compute" and "total" only.
    """

    family = C.PI05_FAMILY

    def __init__(
        self,
        gguf_path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        device: str = "cpu",
        tokenizer_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
        repack: bool = True,
        stage_timing: bool = True,
    ) -> None:
        self.path = os.fspath(gguf_path)
        hdr = read_policy_header(self.path, C.PI05_FAMILY, Pi05Config, NormStats, tokenizer_path, "PaliGemma")
        self.config, self.norm_stats, self.plan_summary, self.file_size = (
            hdr.config, hdr.norm_stats, hdr.plan_summary, hdr.file_size)
        self.preprocessor = Pi05Preprocessor(self.config, hdr.tokenizer, self.norm_stats)
        self._rt = native.native_module().Pi05Runtime(
            self.path, self.config.native_hparams(), n_threads or native.default_threads(), device, repack
        )
        self._rt.stage_timing = bool(stage_timing)
        self._rng = np.random.default_rng(seed)
        log.info("pi05 runtime: %s on %s (%.1f MB)", self.path, self._rt.backend, self.file_size / 1e6)

    def graph_stats(self) -> dict[str, int]:
        """Op counts of the native graph kept between calls (``nodes``, per op, ``rms_norm_mul_add``: the adaRMS
        sequences the CUDA backend fuses); empty until a call without intermediates has built it."""
        return dict(self._rt.graph_stats())

    def profile_ops(self, inputs: Pi05Inputs, noise: np.ndarray | None = None) -> dict[str, tuple[float, int]]:
        """One native call with the per-op profile on: ``op -> (ms, nodes)``, slowest first.  The graph runs one
        node at a time (each synchronised), so the sum exceeds a normal call's compute time by that overhead; it
        says where the time goes, not how long a chunk takes."""
        self._rt.op_profile = True
        try:
            _, timing, _ = self.infer_model_inputs(inputs, noise)
        finally:
            self._rt.op_profile = False
        ops = {k[3:]: (v, int(timing["op_n:" + k[3:]])) for k, v in timing.items() if k.startswith("op:")}
        return dict(sorted(ops.items(), key=lambda kv: -kv[1][0]))

    def reseed(self, seed: int | np.random.SeedSequence) -> None:
        """Restart the noise stream (the flow-matching start noise of every later call) from ``seed``."""
        self._rng = np.random.default_rng(seed)

    def sample_noise(self) -> np.ndarray:
        c = self.config
        return self._rng.standard_normal((c.action_horizon, c.action_dim)).astype(np.float32)

    def infer_model_inputs(
        self, inputs: Pi05Inputs, noise: np.ndarray | None = None, collect: list[str] | tuple[str, ...] = ()
    ) -> tuple[np.ndarray, dict[str, float], dict[str, np.ndarray]]:
        """Native forward on already-preprocessed inputs (batch of one).

        Returns (normalised padded actions [H, action_dim], timing ms, named intermediates)."""
        if inputs.images.shape[0] != 1:
            raise ValueError(f"the native runtime runs one observation at a time, got batch {inputs.images.shape[0]}")
        noise = self.sample_noise() if noise is None else np.asarray(noise, np.float32).reshape(
            self.config.action_horizon, self.config.action_dim)
        return self._rt.infer(
            inputs.images[0], inputs.image_masks[0].astype(np.uint8), inputs.tokens[0].astype(np.int32),
            inputs.token_masks[0].astype(np.uint8), noise, list(collect),
        )

    def infer(self, obs: Observation, noise: np.ndarray | None = None) -> ActionChunk:
        """Observation (images by slot name, state, instruction) -> unnormalised action chunk."""
        t0 = time.perf_counter()
        unknown = set(obs.images) - set(self.config.camera_slots)
        if unknown:
            raise ValueError(f"unknown camera slot(s) {sorted(unknown)}; this policy has {list(self.config.camera_slots)}")
        if not obs.images:
            raise ValueError("observation has no camera image")
        inputs = self.preprocessor(obs.images, obs.state, obs.instruction)
        t1 = time.perf_counter()
        actions, timing, _ = self.infer_model_inputs(inputs, noise)
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError("pi05: the policy produced non-finite actions")
        out = self.preprocessor.unnormalize_actions(actions, state=obs.state)
        timing = dict(timing)
        timing["preprocess"] = (t1 - t0) * 1e3
        timing["total"] = (time.perf_counter() - t0) * 1e3
        return ActionChunk(actions=out, stamp=obs.stamp, timing_ms=timing)
