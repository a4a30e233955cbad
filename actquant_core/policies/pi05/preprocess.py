"""π₀.₅ preprocessing in numpy/OpenCV/SentencePiece — no torch.

One implementation shared by the torch reference (``torch.from_numpy`` on the outputs) and the native
runtime.  Steps:

1. images: every camera slot resized with pad to ``image_size`` and mapped to [-1, 1], channels
   first; a missing camera is all -1 with mask False (``policies.common.image.camera_slots``).
2. state: quantile-normalised with the checkpoint's stats (first ``len(stats)`` entries) and
   zero-padded to ``state_dim``.
3. prompt: ``cleaned = task.strip().replace("_", " ").replace("\\n", " ")``;
   - ``discrete_state_input`` False (openpi pi05_libero): ``BOS + encode(cleaned) + encode("\\n")``;
   - True (lerobot, openpi pi05_base): the normalised padded state is binned into 256 bins over
     [-1, 1] (``np.digitize(s, linspace(-1, 1, 257)[:-1]) - 1``, exactly openpi: values > 1 give 255,
     values < -1 give -1) and the prompt is
     ``BOS + encode("Task: {cleaned}, State: {s0 s1 ...};\\nAction: ")`` (openpi ``PaligemmaTokenizer``).
   Tokens are right-padded with 0 to ``max_token_len`` (mask False) or truncated with a warning.
4. actions out: the model's [H, action_dim] are cut to the stats' length and un-normalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from actquant_core.constants import PI05_STATE_BINS, PI05_STATE_PROMPT
from actquant_core.policies.common.image import camera_slots
from actquant_core.policies.common.normalize import NormStats, normalize, unnormalize
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.config import Pi05Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pi05Inputs:
    """Model inputs for a batch (numpy; feed to torch with ``torch.from_numpy``).

    images: [B, C, 3, S, S] float32 in [-1, 1]; image_masks: [B, C] bool;
    tokens: [B, T] int64; token_masks: [B, T] bool; state: [B, state_dim] float32 (normalised, padded).
    """

    images: np.ndarray
    image_masks: np.ndarray
    tokens: np.ndarray
    token_masks: np.ndarray
    state: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "images": self.images,
            "image_masks": self.image_masks,
            "tokens": self.tokens,
            "token_masks": self.token_masks,
            "state": self.state,
        }

    @staticmethod
    def stack(items: list[Pi05Inputs]) -> Pi05Inputs:
        """Concatenate single-example inputs along the batch axis."""
        if not items:
            raise ValueError("cannot stack an empty list of inputs")
        return Pi05Inputs(*(np.concatenate([getattr(i, f) for i in items], axis=0) for f in Pi05Inputs.__dataclass_fields__))


def clean_task(task: str) -> str:
    """openpi prompt cleaning: strip, '_' -> ' ', newline -> ' '."""
    return task.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray, bins: int = PI05_STATE_BINS) -> np.ndarray:
    """Normalised state in [-1, 1] -> int bins 0..bins-1 (openpi semantics: > 1 -> bins-1, < -1 -> -1)."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.digitize(np.asarray(state, dtype=np.float64), bins=edges) - 1


def build_prompt_tokens(
    tokenizer: SentencePieceTokenizer,
    task: str,
    max_len: int,
    state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise one prompt (see module doc).  state: normalised padded state for the discretised
    prompt, or None for ``BOS + task + "\\n"``.  Returns (tokens [max_len] int64, mask [max_len] bool)."""
    cleaned = clean_task(task)
    if state is None:
        ids = tokenizer.encode(cleaned, add_bos=True) + tokenizer.encode("\n")
    else:
        state_str = " ".join(str(int(b)) for b in discretize_state(state))
        ids = tokenizer.encode(PI05_STATE_PROMPT.format(task=cleaned, state=state_str), add_bos=True)
    if len(ids) > max_len:
        log.warning("prompt has %d tokens > max_token_len %d: truncated", len(ids), max_len)
        ids = ids[:max_len]
    tokens = np.zeros((max_len,), dtype=np.int64)
    mask = np.zeros((max_len,), dtype=bool)
    tokens[: len(ids)] = ids
    mask[: len(ids)] = True
    return tokens, mask


class Pi05Preprocessor:
    """Observation (images dict, state, instruction) -> ``Pi05Inputs``; model actions -> robot actions.

    Args:
        config: the policy config (image size, slots, token length, state/action dims).
        tokenizer: SentencePiece model (PaliGemma's for real checkpoints, ours for small presets).
        norm_stats: state/action statistics; None means identity (tests / un-normalised training).
        norm_mode: "quantile" (pi0.5) or "mean_std".
    """

    def __init__(
        self,
        config: Pi05Config,
        tokenizer: SentencePieceTokenizer,
        norm_stats: NormStats | None,
        norm_mode: str = "quantile",
    ) -> None:
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer vocab {tokenizer.vocab_size} exceeds the model's vocab_size {config.vocab_size}"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.norm_stats = norm_stats
        self.norm_mode = norm_mode

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """[d] robot state -> [state_dim] normalised, zero-padded."""
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(state)):
            raise ValueError(f"state has NaN/inf entries: {state}")
        if state.shape[0] > self.config.state_dim:
            raise ValueError(f"state has {state.shape[0]} entries > state_dim {self.config.state_dim}")
        if self.norm_stats is not None:
            state = normalize(state, self.norm_stats.state, self.norm_mode)
        out = np.zeros((self.config.state_dim,), dtype=np.float32)
        out[: state.shape[0]] = state
        return out

    def __call__(self, images: dict[str, np.ndarray], state: np.ndarray, instruction: str) -> Pi05Inputs:
        """One observation -> batch-of-one inputs."""
        c = self.config
        pixels, masks = camera_slots(images, c.camera_slots, c.image_size)
        norm_state = self.normalize_state(state)
        tokens, tmask = build_prompt_tokens(
            self.tokenizer, instruction, c.max_token_len, norm_state if c.discrete_state_input else None
        )
        return Pi05Inputs(pixels[None], masks[None], tokens[None], tmask[None], norm_state[None])

    def normalize_actions(self, actions: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Robot actions [..., H, d] -> model space [..., H, action_dim] (normalised, zero-padded).

        With ``config.delta_action_dims`` = k > 0 the first k dims are made relative to ``state`` [..., >= k]
        (the observation's robot state) first; ``state`` is then required."""
        actions = np.asarray(actions, dtype=np.float32)
        d = actions.shape[-1]
        if d > self.config.action_dim:
            raise ValueError(f"actions have {d} dims > action_dim {self.config.action_dim}")
        k = self.config.delta_action_dims
        if k:
            actions = actions.copy()
            actions[..., :k] -= self._delta_state(state, actions.ndim)[..., :k]
        if self.norm_stats is not None:
            actions = normalize(actions, self.norm_stats.actions, self.norm_mode)
        out = np.zeros(actions.shape[:-1] + (self.config.action_dim,), dtype=np.float32)
        out[..., :d] = actions
        return out

    def _delta_state(self, state: np.ndarray | None, ndim: int) -> np.ndarray:
        """state [..., >= k] -> broadcastable against actions [..., H, d]."""
        k = self.config.delta_action_dims
        if state is None:
            raise ValueError(f"this policy's first {k} action dims are relative to the robot state "
                             "(delta_action_dims): the state is required")
        st = np.asarray(state, dtype=np.float32)
        if st.shape[-1] < k or not np.all(np.isfinite(st[..., :k])):
            raise ValueError(f"state must have >= {k} finite entries for delta actions, got shape {st.shape}")
        return st.reshape(st.shape[:-1] + (1,) * (ndim - st.ndim) + (st.shape[-1],))

    def unnormalize_actions(self, actions: np.ndarray, action_dims: int | None = None,
                            state: np.ndarray | None = None) -> np.ndarray:
        """Model actions [..., H, action_dim] -> robot actions [..., H, d], d = action_dims or the
        stats' length (or action_dim when there are no stats).  Delta policies add ``state`` back to the
        first ``delta_action_dims`` dims (``state`` required: pass zeros to get the relative motion)."""
        actions = np.asarray(actions, dtype=np.float32)
        if self.norm_stats is not None:
            d = self.norm_stats.actions.dim if action_dims is None else action_dims
            out = unnormalize(actions, self.norm_stats.actions, self.norm_mode)[..., :d]
        else:
            out = actions[..., : (action_dims or actions.shape[-1])]
        k = min(self.config.delta_action_dims, out.shape[-1])
        if k:
            out = out.copy()
            out[..., :k] += self._delta_state(state, out.ndim)[..., :k]
        return out
