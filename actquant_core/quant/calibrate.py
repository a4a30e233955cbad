"""Calibration: episodes -> frames -> pooled activations (HSIC), activation importance, Action-Mixed Fisher.

Reference: Akbari et al., "ActQuant", arXiv 2605.24011 (stage 1 forward passes with hooks on every
linear layer; stage 2 Fisher of the action loss over batches of 8).

Sources (:func:`load_episodes`):

* a LeRobot-style dataset root (``meta/info.json``), a simulated-demos output folder (its ``lerobot/``),
  one rosbag2 folder or a folder of rosbag2 folders written by the simulator -- all through
  ``actquant_core.sim.episodes.read_episodes``;
* any other rosbag2 (sqlite3 or mcap) through a :class:`BagMapping` (topic mapping below);
* in-memory :class:`~actquant_core.sim.episodes.Episode` objects.

Rosbag2 topic mapping (:class:`BagMapping`, defaults = the project's topics):

=========================  =================================  ==========================================
role                       default topic                      used as
=========================  =================================  ==========================================
camera images              /camera/base/image_raw ->          ``images[slot]``: the latest image of each
                           base_0_rgb, /camera/wrist/          camera at or before the frame time
                           image_raw -> left_wrist_0_rgb      (sensor_msgs/Image or CompressedImage)
joint states (frame clock) /joint_states                      one frame per message; ``state`` =
                                                              positions of ``joint_names`` in order
instruction                /instruction                       the latest string (else ``instruction``)
actions                    /action_chunk                      ``action_source="chunk"``: point 0 of the
                                                              latest JointTrajectory = the frame's action;
                                                              ``"future_state"``: the next joint state
=========================  =================================  ==========================================

Frames (:func:`sample_frames`): every frame of every selected episode with its next ``H`` actions
(padded with the episode's last action, as in training); a seeded reservoir sample keeps at most
``max_frames`` without holding the rest in memory.  Episodes are split deterministically: with
``holdout_every = k``, the episodes at ordinal positions ``k-1, 2k-1, ...`` are the held-out split
(used by ``actquant eval-actions``), the others the calibration split.

Statistics (:func:`calibrate`), streamed batch by batch, no full activation kept:

* HSIC: per linear target the token-pooled input and output (``adapter.pool``), X = pooled input of
  the first decoder layer, Y = action chunk ``[B, H*d]`` (standardised inside the accumulator);
* activation importance: mean ``x_c^2`` over the valid token rows of each target's input;
* Gram ``XᵀX`` (GPTQ's Hessian, :class:`~.gptq.GramAccumulator`) over the same token rows, for the
  ``gram_targets`` only (``cols²`` float64 each);
* Fisher: ``FisherAccumulator`` over the adapter's loss parts, batches of ``fisher_batch_size`` frames
  with fresh ``noise ~ N(0, I)`` and ``t ~ Beta(1.5, 1)`` per batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapters import POOLINGS, PolicyAdapter
from .fisher import FisherAccumulator, FisherConfig
from .gptq import GramAccumulator, GramStats
from .hsic import HsicAccumulator, HsicConfig, HsicResult
from .importance import ActivationImportanceAccumulator

log = logging.getLogger(__name__)

__all__ = [
    "BagMapping",
    "CalibFrame",
    "CalibConfig",
    "CalibrationResult",
    "SPLITS",
    "load_episodes",
    "read_bag_episode",
    "sample_frames",
    "calibrate",
    "calibrate_fisher",
    "resolve_device",
]

SPLITS = ("calib", "holdout", "all")
#: action targets of calibration (see :class:`CalibConfig`)
TARGETS = ("data", "policy")


def resolve_device(device: str | None) -> torch.device:
    """"cuda" when available and ``device`` is None / "auto", else the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BagMapping:
    """How a recorded rosbag2 becomes an episode (see the module docstring's table).

    Attributes:
        topic_map: ``actquant_core.data.rosbag_io.TopicMap`` (cameras -> slots, joint states,
            instruction, action chunk topics).
        joint_names: joint order of the state and action vectors (default: UR3 6 joints + gripper).
        action_source: "chunk" (the action-chunk topic) or "future_state" (the next joint state).
        instruction: instruction used when the bag has none on the instruction topic.
    """

    topic_map: Any = None
    joint_names: tuple[str, ...] = ()
    action_source: str = "chunk"
    instruction: str = ""

    def __post_init__(self) -> None:
        from actquant_core.constants import SIM_ARM_JOINTS, SIM_GRIPPER_JOINT_NAME
        from actquant_core.data.rosbag_io import TopicMap

        if self.topic_map is None:
            object.__setattr__(self, "topic_map", TopicMap())
        if not self.joint_names:
            object.__setattr__(self, "joint_names", tuple(SIM_ARM_JOINTS) + (SIM_GRIPPER_JOINT_NAME,))
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        if self.action_source not in ("chunk", "future_state"):
            raise ValueError(f"BagMapping.action_source={self.action_source!r}; expected 'chunk' or 'future_state'")


def read_bag_episode(path: str | Path, mapping: BagMapping | None = None, index: int = 0) -> Any:
    """One episode from any rosbag2 (sqlite3 / mcap) through ``mapping``; frames = joint-state messages.

    Frames before the first image of every mapped camera are dropped (no observation yet).  Raises
    ``ValueError`` when the bag yields no frame or lacks the action source.
    """
    from actquant_core.data.rosbag_io import KIND_ACTION_CHUNK, KIND_IMAGE, KIND_INSTRUCTION, KIND_JOINT_STATE, read_bag
    from actquant_core.sim.episodes import Episode

    m = mapping or BagMapping()
    latest_img: dict[str, np.ndarray] = {}
    latest_chunk: np.ndarray | None = None
    instruction = m.instruction
    imgs: dict[str, list[np.ndarray]] = {s: [] for s in m.topic_map.cameras.values()}
    states, actions, stamps = [], [], []
    for msg in read_bag(path, m.topic_map):
        if msg.kind == KIND_IMAGE:
            latest_img[msg.slot] = msg.value
        elif msg.kind == KIND_INSTRUCTION:
            instruction = msg.value
        elif msg.kind == KIND_ACTION_CHUNK:
            idx = {n: i for i, n in enumerate(msg.value.joint_names)}
            missing = [n for n in m.joint_names if n not in idx]
            if missing:
                raise ValueError(f"{path}: action chunk lacks joints {missing}")
            latest_chunk = msg.value.actions[:, [idx[n] for n in m.joint_names]]
        elif msg.kind == KIND_JOINT_STATE:
            if len(latest_img) < len(imgs):
                continue
            if m.action_source == "chunk" and latest_chunk is None:
                continue
            states.append(msg.value.ordered(m.joint_names))
            for s in imgs:
                imgs[s].append(latest_img[s])
            actions.append(latest_chunk[0] if m.action_source == "chunk" else None)
            stamps.append(msg.stamp_ns)
    if not states:
        raise ValueError(f"{path}: no frame (needs joint states after an image on every mapped camera"
                         f"{' and an action chunk' if m.action_source == 'chunk' else ''})")
    state = np.stack(states).astype(np.float32)
    if m.action_source == "future_state":
        action = np.concatenate([state[1:], state[-1:]], axis=0)
    else:
        action = np.stack(actions).astype(np.float32)
    fps = 1e9 / float(np.median(np.diff(stamps))) if len(stamps) > 1 else 10.0
    shapes = {s: v[0].shape for s, v in imgs.items()}
    images = {s: np.stack(v) for s, v in imgs.items() if all(x.shape == shapes[s] for x in v)}
    return Episode(instruction=instruction, images=images, state=state, action=action, fps=fps, index=index)


def load_episodes(source: Any, bag_mapping: BagMapping | None = None) -> Iterator[Any]:
    """Episodes from a path (dataset / demos folder / bag(s)) or an iterable of ``Episode`` objects.

    With ``bag_mapping`` every rosbag2 folder under ``source`` (or ``source`` itself) is read through
    :func:`read_bag_episode`; without it, the simulator's readers are used.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"calibration source {str(path)!r} does not exist")
        if bag_mapping is not None:
            bags = [path] if (path / "metadata.yaml").exists() else sorted(
                p for p in path.iterdir() if (p / "metadata.yaml").exists())
            if not bags:
                raise FileNotFoundError(f"{path}: no rosbag2 folder (metadata.yaml) found")
            for i, b in enumerate(bags):
                yield read_bag_episode(b, bag_mapping, index=i)
            return
        from actquant_core.sim.episodes import read_episodes

        yield from read_episodes(path)
        return
    if isinstance(source, Iterable):
        yield from source
        return
    raise TypeError(f"calibration source must be a path or an iterable of episodes, got {type(source).__name__}")


@dataclass(frozen=True)
class CalibFrame:
    """One calibration sample.

    Attributes:
        images: camera slot -> uint8 [h, w, 3] RGB.
        state: [d_state] robot state (unnormalised).
        instruction: language instruction.
        actions: [H, d_action] the frame's action and the next ``H - 1`` (robot units).
        episode, t: where it came from.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    actions: np.ndarray
    episode: int = 0
    t: int = 0


def sample_frames(
    episodes: Iterable[Any],
    horizon: int,
    max_frames: int | None,
    *,
    seed: int = 0,
    split: str = "all",
    holdout_every: int = 5,
    stride: int = 1,
    progress: bool = False,
) -> list[CalibFrame]:
    """Seeded reservoir sample of frames (see the module docstring); sorted by (episode, t).

    Args:
        episodes: ``Episode`` objects (read lazily; each is dropped after its frames are sampled).
        horizon: actions per chunk (the policy's action horizon).
        max_frames: keep at most this many frames (None = all).
        seed: sampling seed.
        split: "calib", "holdout" or "all" episodes.
        holdout_every: k of the episode split (ordinal ``i % k == k - 1`` is held out; >= 2).
        stride: consider every ``stride``-th frame of an episode.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if horizon < 1 or stride < 1:
        raise ValueError(f"horizon and stride must be >= 1, got {horizon}, {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if split != "all" and holdout_every < 2:
        raise ValueError(f"holdout_every must be >= 2 to split episodes, got {holdout_every}")
    rng = np.random.default_rng(seed)
    reservoir: list[tuple[int, int, CalibFrame]] = []
    seen = 0
    n_eps = 0
    it = episodes
    if progress:
        from tqdm import tqdm

        it = tqdm(episodes, desc="calibration episodes", unit="ep")
    for i, ep in enumerate(it):
        held = split != "all" and i % holdout_every == holdout_every - 1
        if (split == "calib" and held) or (split == "holdout" and not held):
            continue
        n_eps += 1
        T = len(ep)
        for t in range(0, T, stride):
            seen += 1
            if max_frames is None or len(reservoir) < max_frames:
                slot = len(reservoir)
                reservoir.append(None)  # type: ignore[arg-type]
            else:
                j = int(rng.integers(0, seen))
                if j >= max_frames:
                    continue
                slot = j
            idx = np.minimum(np.arange(t, t + horizon), T - 1)
            frame = CalibFrame(images={c: np.array(v[t]) for c, v in ep.images.items()},
                               state=np.array(ep.state[t], np.float32), instruction=ep.instruction,
                               actions=np.array(ep.action[idx], np.float32), episode=int(ep.index), t=t)
            reservoir[slot] = (int(ep.index), t, frame)
    log.info("sampled %d of %d frames from %d episode(s) (split %s, seed %d)", len(reservoir), seen, n_eps, split, seed)
    return [f for _, _, f in sorted(reservoir, key=lambda r: (r[0], r[1]))]


# ----------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibConfig:
    """Calibration settings.

    Attributes:
        batch_size: frames per forward pass (HSIC / activation importance).
        fisher_batch_size: frames per Fisher gradient (paper: 8).
        fisher_batches: cap on Fisher batches (None = every frame once).
        pooling: "valid" (mean over valid tokens) or "all" (every token, padding included).
        seed: seed of the noise / flow-matching times.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        hsic: :class:`~.hsic.HsicConfig` of the scores.
        progress: tqdm progress bars.
        fisher_accumulate_device: device of the Fisher running sums (None = the parameter's).
        targets: action targets of Y and of the Fisher's loss: "data" (the recorded action chunk, the
            paper) or "policy" (the full-precision policy's own sampled chunk: self-distillation; the
            only meaningful choice for a policy that was not trained on the calibration data, e.g.
            random weights in tests and benchmarks).
    """

    batch_size: int = 8
    fisher_batch_size: int = 8
    fisher_batches: int | None = None
    pooling: str = "valid"
    seed: int = 0
    device: str | None = None
    hsic: HsicConfig = field(default_factory=HsicConfig)
    progress: bool = True
    fisher_accumulate_device: str | None = None
    targets: str = "data"

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"CalibConfig.targets={self.targets!r}; expected one of {TARGETS}")
        if self.batch_size < 1 or self.fisher_batch_size < 1:
            raise ValueError(f"CalibConfig batch sizes must be >= 1, got {self.batch_size}, {self.fisher_batch_size}")
        if self.fisher_batches is not None and self.fisher_batches < 1:
            raise ValueError(f"CalibConfig.fisher_batches must be >= 1 or None, got {self.fisher_batches}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"CalibConfig.pooling={self.pooling!r}; expected one of {POOLINGS}")


@dataclass
class CalibrationResult:
    """What calibration produced (each part None when not requested).

    Attributes:
        hsic: HSIC scores of the scored targets.
        activation_importance: canonical name -> mean x^2 per input column ``[cols]``.
        gram: canonical name -> ``XᵀX`` over the input token rows (GPTQ targets only).
        fisher: canonical name -> Fisher ``[rows, cols]`` (canonical layout).
        n_frames: frames used; fisher_batches: Fisher batches used.
        seconds: wall time per stage ("forward", "hsic_solve", "fisher").
        fisher_losses: mean loss parts over the Fisher batches.
    """

    hsic: HsicResult | None = None
    activation_importance: dict[str, np.ndarray] | None = None
    fisher: dict[str, np.ndarray] | None = None
    gram: dict[str, GramStats] | None = None
    n_frames: int = 0
    fisher_batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    fisher_losses: dict[str, float] = field(default_factory=dict)


def _batches(frames: Sequence[CalibFrame], size: int) -> Iterator[Sequence[CalibFrame]]:
    for i in range(0, len(frames), size):
        yield frames[i : i + size]


def _check_frames(frames: Sequence[CalibFrame]) -> None:
    if len(frames) == 0:
        raise ValueError("calibration set is empty: no frame was sampled (check --calib, the split and "
                         "--calib-frames)")


def calibrate(
    adapter: PolicyAdapter,
    frames: Sequence[CalibFrame],
    config: CalibConfig,
    *,
    hsic_targets: Sequence[str] = (),
    importance_targets: Sequence[str] = (),
    gram_targets: Sequence[str] = (),
    gram_max_cols: int | None = None,
) -> CalibrationResult:
    """Stage-1 statistics: HSIC scores of ``hsic_targets``, activation importance of ``importance_targets``
    and the input Gram ``XᵀX`` of ``gram_targets`` (GPTQ; refused above ``gram_max_cols`` columns,
    default :attr:`.gptq.GptqConfig.max_cols`).

    All stream through one forward per batch; raises ``ValueError`` on an empty calibration set, a
    target the adapter does not know, or NaN / Inf activations (naming the tensor).
    """
    _check_frames(frames)
    if len(hsic_targets) and len(frames) < 2:
        raise ValueError(f"HSIC needs at least 2 calibration frames, got {len(frames)}")
    targets = {t.name: t for t in adapter.linear_targets()}
    wanted = list(dict.fromkeys([*hsic_targets, *importance_targets, *gram_targets]))
    unknown = [n for n in wanted if n not in targets]
    if unknown:
        raise ValueError(f"calibration targets without a hookable linear layer: {unknown[:5]}")
    res = CalibrationResult(n_frames=len(frames))
    if not wanted:
        return res
    dev = resolve_device(config.device)
    model = adapter.model
    model.to(dev).eval()
    hsic_set, imp_set = set(hsic_targets), set(importance_targets)
    acc = HsicAccumulator(config.hsic) if hsic_set else None
    imp = ActivationImportanceAccumulator() if imp_set else None
    gram_set = set(gram_targets)
    gram = (GramAccumulator() if gram_max_cols is None else GramAccumulator(gram_max_cols)) if gram_set else None
    gen = torch.Generator().manual_seed(config.seed)
    target_gen = torch.Generator().manual_seed(config.seed + 2)
    current: dict[str, Any] = {}
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(name: str, kind: str):
        def hook(_mod, inputs, output):
            if not current.get("active"):
                return  # e.g. the policy's own sampling pass for targets="policy"
            x = inputs[0].detach()
            batch = current["batch"]
            if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(output).all()):
                raise ValueError(f"NaN or Inf activation at {name!r} (batch starting at frame {current['start']})")
            if name in imp_set or name in gram_set:
                rows = adapter.rows(kind, x, batch, config.pooling).float()
                if name in imp_set:
                    imp.add_batch(name, rows)
                if name in gram_set:
                    gram.add_batch(name, rows)
            if name in hsic_set:
                captured[name] = (adapter.pool(kind, x, batch, config.pooling).cpu(),
                                  adapter.pool(kind, output.detach(), batch, config.pooling).cpu())
        return hook

    def x_hook(_mod, inputs):
        from .adapters import POOL_PREFIX

        if not current.get("active"):
            return
        current["x"] = adapter.pool(POOL_PREFIX, inputs[0].detach(), current["batch"], config.pooling).cpu()

    handles = [model.get_submodule(targets[n].module).register_forward_hook(make_hook(n, targets[n].pool))
               for n in wanted]
    if acc is not None:
        handles.append(model.get_submodule(adapter.x_module).register_forward_pre_hook(x_hook))
    t0 = time.perf_counter()
    try:
        it: Iterable = _batches(frames, config.batch_size)
        if config.progress:
            from tqdm import tqdm

            it = tqdm(it, total=math.ceil(len(frames) / config.batch_size), desc="calibration forward", unit="batch")
        start = 0
        with torch.no_grad():
            for chunk in it:
                batch = adapter.prepare_batch(chunk, dev)
                if config.targets == "policy":
                    batch["actions"] = adapter.policy_actions(batch, target_gen)
                adapter.add_loss_randomness(batch, gen)
                current.update(batch=batch, start=start)
                captured.clear()
                current["active"] = True
                adapter.run_forward(batch, gen)
                current["active"] = False
                if acc is not None:
                    missing = sorted(hsic_set - set(captured))
                    if missing:
                        raise RuntimeError(f"the calibration forward did not reach {missing[:5]}")
                    acc.add_batch(current["x"], adapter.action_target(batch).cpu(), dict(captured))
                start += len(chunk)
    finally:
        for h in handles:
            h.remove()
        current.clear()
        captured.clear()
    res.seconds["forward"] = time.perf_counter() - t0
    if acc is not None:
        t1 = time.perf_counter()
        res.hsic = acc.solve()
        res.seconds["hsic_solve"] = time.perf_counter() - t1
    if imp is not None:
        res.activation_importance = imp.solve()
    if gram is not None:
        res.gram = gram.solve()
    return res


def calibrate_fisher(
    adapter: PolicyAdapter,
    frames: Sequence[CalibFrame],
    config: CalibConfig,
    names: Sequence[str],
) -> tuple[dict[str, np.ndarray], int, dict[str, float], float]:
    """Action-Mixed Fisher of the canonical tensors ``names``: (fisher, batches, mean losses, seconds).

    Tensors without a torch parameter (folded norms) are skipped; the model is not modified.
    """
    _check_frames(frames)
    if not names:
        return {}, 0, {}, 0.0
    dev = resolve_device(config.device)
    model = adapter.model
    model.to(dev).eval()
    pmap = adapter.fisher_param_names(names)
    if not pmap:
        return {}, 0, {}, 0.0
    inv = {p: c for c, p in pmap.items()}
    fc = FisherConfig(alpha=adapter.fisher_alpha, accumulate_device=config.fisher_accumulate_device)
    fa = FisherAccumulator(model, list(pmap.values()), adapter.loss_parts, fc)
    gen = torch.Generator().manual_seed(config.seed + 1)
    target_gen = torch.Generator().manual_seed(config.seed + 3)
    order = np.random.default_rng(config.seed).permutation(len(frames))
    shuffled = [frames[i] for i in order]
    n_batches = math.ceil(len(frames) / config.fisher_batch_size)
    if config.fisher_batches is not None:
        n_batches = min(n_batches, config.fisher_batches)
    t0 = time.perf_counter()
    it: Iterable = range(n_batches)
    if config.progress:
        from tqdm import tqdm

        it = tqdm(it, desc="fisher", unit="batch")
    for b in it:
        chunk = shuffled[b * config.fisher_batch_size : (b + 1) * config.fisher_batch_size]
        batch = adapter.prepare_batch(chunk, dev)
        if config.targets == "policy":
            batch["actions"] = adapter.policy_actions(batch, target_gen)
        adapter.add_loss_randomness(batch, gen)
        fa.add_batch(batch)
    r = fa.solve()
    out = {inv[p]: adapter.fisher_to_canonical(inv[p], F) for p, F in r.fisher.items()}
    return out, r.n_batches, r.mean_losses, time.perf_counter() - t0
