"""Train a small π₀.₅ (``pi05-small``) on simulated demonstrations with the flow-matching loss.

    python -m actquant_core.train.pi05 --data DEMOS/lerobot --out runs/pi05-small --minutes 8 [--resume]

Data: a LeRobot-style dataset from ``actquant_core.sim.demos`` (state [7] = q[6] + gripper, action [7] =
absolute joint targets + gripper, two cameras). Each frame is one sample: its images, its state (quantile-
normalised, used in the discretised-state prompt), the instruction, and the next ``action_horizon`` actions
(padded with the episode's last action). Norm stats (q01/q99) are computed from the dataset.

Output folder (the format of ``load_trained``):
    pi05_config.json   Pi05Config
    model-0000K-of-0000N.safetensors  canonical tensor names (actquant_core.constants.PI05_TENSOR_NAMES), bf16,
                       EMA weights, in shards of <= 12 MB (so each file fits the GPU machine's transfer limit)
    norm_stats.json    NormStats (state, actions)
    tokenizer.model    the SentencePiece model the prompts were built with
    train_log.json     settings, seed, steps, loss curve, wall time, device
The training loop is time-boxed (``--minutes``) with a time-based cosine schedule, checkpoints every
``--save-every`` seconds and can resume (``--resume``) so a run can be split over several GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from actquant_core.constants import PI05_TENSOR_NAMES
from actquant_core.policies.common.normalize import FeatureStats, NormStats
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.canonical import canonical_state_dict, model_from_canonical
from actquant_core.policies.pi05.config import Pi05Config, get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.policies.pi05.preprocess import Pi05Preprocessor
from actquant_core.train.common import (
    LoopConfig,
    TrainLoop,
    camera_frames,
    chunk_indices,
    device_generator,
    quantile_bounds,
    random_shift,
    read_bf16_shards,
    read_episodes_at,
    run_with_checkpoint,
    train_log,
    write_bf16_shards,
)

log = logging.getLogger("actquant.train.pi05")

ROBOT_DIMS = 7  # q[6] + gripper


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (saved in train_log.json).

    Attributes:
        preset: Pi05Config preset name.
        batch_size: samples per step.
        lr: peak AdamW learning rate; warmup_steps linear warm-up, then cosine over the time box to lr*0.05.
        weight_decay: AdamW weight decay.
        minutes: training time box (wall clock).
        ema: EMA decay of the saved weights (0 disables).
        seed: torch / numpy seed.
        grad_clip: max gradient norm.
        shift_pad: random-shift image augmentation (pixels of replicate padding; 0 disables).
        delta_action_dims: override the preset's ``delta_action_dims`` (None keeps it).
        robot_dims_loss: restrict the flow-matching loss to the 7 robot dims (off = openpi: every dim).
    """

    preset: str = "pi05-small"
    batch_size: int = 128
    lr: float = 3e-4
    warmup_steps: int = 300
    weight_decay: float = 1e-4
    minutes: float = 8.0
    ema: float = 0.999
    seed: int = 0
    grad_clip: float = 1.0
    shift_pad: int = 4
    delta_action_dims: int | None = None
    robot_dims_loss: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.minutes <= 0:
            raise ValueError(f"TrainConfig: batch_size, lr and minutes must be positive, got {self}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"TrainConfig.ema must be in [0, 1), got {self.ema}")
        if self.shift_pad < 0:
            raise ValueError(f"TrainConfig.shift_pad must be >= 0, got {self.shift_pad}")

    def loop(self) -> LoopConfig:
        return LoopConfig(lr=self.lr, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                          minutes=self.minutes, ema=self.ema, grad_clip=self.grad_clip)


def quantile_stats(x: np.ndarray) -> FeatureStats:
    """q01/q99/mean/std per dimension of x [N, D]."""
    mean, std, q01, q99 = quantile_bounds(x)
    return FeatureStats(mean=mean, std=std, q01=q01, q99=q99)


def stats_not_covering(old: NormStats, new: NormStats, tol: float = 0.25) -> list[str]:
    """Dims where ``new``'s q01/q99 lie more than ``tol`` × old's q99 − q01 range outside ``old``'s (e.g. a
    joint the expert never moved, range ~1e-4 rad, that DART-perturbed data now moves by ±0.04 rad):
    reusing ``old`` there would map the data to values of ±100 in the quantile-normalised space."""
    bad = []
    for name in ("state", "actions"):
        o, n = getattr(old, name), getattr(new, name)
        oq01, oq99 = np.asarray(o.q01, np.float64), np.asarray(o.q99, np.float64)
        nq01, nq99 = np.asarray(n.q01, np.float64), np.asarray(n.q99, np.float64)
        slack = tol * (oq99 - oq01) + 1e-6
        for d in np.nonzero((nq01 < oq01 - slack) | (nq99 > oq99 + slack))[0]:
            bad.append(f"{name}[{d}] [{nq01[d]:.4g}, {nq99[d]:.4g}] vs [{oq01[d]:.4g}, {oq99[d]:.4g}]")
    return bad


class FrameDataset:
    """All frames of a dataset in memory: uint8 images at the policy's resolution, tokens, normalised
    state and action chunks.  Camera frames larger than ``cfg.image_size`` are downsampled with
    :func:`~actquant_core.train.common.area_downsample` (= the runtime's OpenCV INTER_AREA resize)."""

    def __init__(self, episodes, cfg: Pi05Config, tokenizer: SentencePieceTokenizer,
                 norm_stats: NormStats | None = None) -> None:
        imgs, states, chunks, instr = [], [], [], []
        H = cfg.action_horizon
        self.cameras: tuple[str, ...] | None = None
        for ep in episodes:
            if self.cameras is None:
                self.cameras = tuple(c for c in cfg.camera_slots if c in ep.images)
            T = len(ep)
            chunks.append(ep.action[chunk_indices(T, H)])  # [T, H, 7]
            states.append(ep.state)
            imgs.append(camera_frames(ep, self.cameras, cfg.image_size))  # [T, ncam, S, S, 3]
            instr += [ep.instruction] * T
        if not imgs:
            raise ValueError("no episodes in the dataset")
        self.images = np.concatenate(imgs)
        state = np.concatenate(states).astype(np.float32)
        actions = np.concatenate(chunks).astype(np.float32)
        rel = actions.copy()
        k = cfg.delta_action_dims
        rel[..., :k] -= state[:, None, :k]  # statistics of what the model predicts
        fresh = NormStats(state=quantile_stats(state), actions=quantile_stats(rel.reshape(-1, ROBOT_DIMS)))
        self.norm_stats = fresh
        if norm_stats is not None:
            bad = stats_not_covering(norm_stats, fresh)
            if bad:  # openpi's quantile map does not clip: a dim far outside the old range explodes the loss
                log.warning("the warm start's norm stats do not cover this data (%s); using the data's own",
                            ", ".join(bad))
            else:
                self.norm_stats = norm_stats
        pre = Pi05Preprocessor(cfg, tokenizer, self.norm_stats)
        self.actions = pre.normalize_actions(actions, state)  # [N, H, 32] (delta dims relative to the state)
        toks, masks = [], []
        from actquant_core.policies.pi05.preprocess import build_prompt_tokens

        for s, text in zip(state, instr):
            ns = pre.normalize_state(s)
            t, m = build_prompt_tokens(tokenizer, text, cfg.max_token_len, ns if cfg.discrete_state_input else None)
            toks.append(t)
            masks.append(m)
        self.tokens = np.stack(toks).astype(np.int64)
        self.token_masks = np.stack(masks)
        slots = list(cfg.camera_slots)
        self.slot_index = [slots.index(c) for c in self.cameras]
        log.info("dataset: %d frames, cameras %s, %.1f GB of images", len(self), self.cameras, self.images.nbytes / 1e9)

    def __len__(self) -> int:
        return len(self.tokens)

    def to(self, device: torch.device) -> DeviceFrames:
        """The whole dataset as tensors on ``device`` (uint8 images stay uint8)."""
        return DeviceFrames(
            images=torch.from_numpy(self.images).to(device), tokens=torch.from_numpy(self.tokens).to(device),
            token_masks=torch.from_numpy(self.token_masks).to(device),
            actions=torch.from_numpy(self.actions).to(device), slot_index=list(self.slot_index))


@dataclass
class DeviceFrames:
    """A :class:`FrameDataset` resident on the training device (batches are gathered there)."""

    images: torch.Tensor  # uint8 [N, ncam, S, S, 3]
    tokens: torch.Tensor  # int64 [N, T]
    token_masks: torch.Tensor  # bool [N, T]
    actions: torch.Tensor  # float32 [N, H, 32]
    slot_index: list[int]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def make_batch(ds: DeviceFrames, idx: torch.Tensor, cfg: Pi05Config, shift_pad: int = 0,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Images uint8 -> [-1, 1] (same formula as policies.common.image.uint8_to_signed_unit), optional
    random-shift augmentation per camera; masked slots are -1 with mask False."""
    B = len(idx)
    device = ds.images.device
    img = ds.images[idx]  # [B, ncam, S, S, 3] uint8
    x = img.float() * (2.0 / 255.0) - 1.0
    x = x.permute(0, 1, 4, 2, 3)  # [B, ncam, 3, S, S]
    images = torch.full((B, cfg.num_cameras, 3, cfg.image_size, cfg.image_size), -1.0, device=device)
    masks = torch.zeros((B, cfg.num_cameras), dtype=torch.bool, device=device)
    for j, slot in enumerate(ds.slot_index):
        images[:, slot] = random_shift(x[:, j], shift_pad, generator)
        masks[:, slot] = True
    return {
        "images": images,
        "image_masks": masks,
        "tokens": ds.tokens[idx],
        "token_masks": ds.token_masks[idx],
        "actions": ds.actions[idx],
    }


def save_trained(out: Path, model: Pi05Model, norm_stats: NormStats, tokenizer: SentencePieceTokenizer,
                 log_data: dict) -> None:
    write_bf16_shards(out, canonical_state_dict(model), "actquant-canonical")
    (out / "pi05_config.json").write_text(model.config.to_json())
    (out / "norm_stats.json").write_text(norm_stats.to_json())
    (out / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    (out / "train_log.json").write_text(json.dumps(log_data, indent=1))


def load_trained(path: str | Path, target: Pi05Config | None = None
                 ) -> tuple[Pi05Config, Pi05Model, NormStats, SentencePieceTokenizer]:
    """Loads a folder written by ``save_trained`` (the bundled small policies use this format).

    ``target``: build this config instead of the saved one; allowed when the two differ only in
    ``image_size`` (a warm start at another resolution: the vision position embedding is resampled
    bilinearly over the patch grid, every other tensor is kept) and/or ``delta_action_dims`` (a warm
    start that re-learns the action parameterisation; the norm stats then come from the new data)."""
    path = Path(path)
    for f in ("pi05_config.json", "norm_stats.json", "tokenizer.model"):
        if not (path / f).exists():
            raise FileNotFoundError(f"{path}: missing {f} (not a trained pi05 folder)")
    cfg = Pi05Config.from_json((path / "pi05_config.json").read_text())
    tensors = read_bf16_shards(path)
    if target is not None and target != cfg:
        tensors = _adapt_image_size(tensors, cfg, target, path)
        cfg = target
    model = model_from_canonical(cfg, tensors)
    ns = NormStats.from_json((path / "norm_stats.json").read_text())
    tok = SentencePieceTokenizer((path / "tokenizer.model").read_bytes(), source=str(path / "tokenizer.model"))
    return cfg, model, ns, tok


def _adapt_image_size(tensors: dict[str, np.ndarray], saved: Pi05Config, target: Pi05Config,
                      path: Path) -> dict[str, np.ndarray]:
    """Resample the vision position embedding [n_old, W] -> [n_new, W] (bilinear over the patch grid)."""
    if saved.replace(image_size=target.image_size, delta_action_dims=target.delta_action_dims) != target:
        raise ValueError(f"{path}: saved config differs from the target config in more than image_size / "
                         f"delta_action_dims; saved {saved}, target {target}")
    if saved.image_size == target.image_size:
        return tensors
    name = PI05_TENSOR_NAMES["v_pos_embd"]
    pos = torch.from_numpy(tensors[name])  # [g_old^2, W]
    g_old, g_new = saved.image_size // saved.patch_size, target.image_size // target.patch_size
    grid = pos.reshape(g_old, g_old, -1).permute(2, 0, 1)[None]
    res = torch.nn.functional.interpolate(grid, size=(g_new, g_new), mode="bilinear", align_corners=False,
                                          antialias=g_new < g_old)
    out = dict(tensors)
    out[name] = res[0].permute(1, 2, 0).reshape(g_new * g_new, -1).contiguous().numpy()
    log.info("%s: vision position embedding resampled %dx%d -> %dx%d patches", path, g_old, g_old, g_new, g_new)
    return out


def train(data: Path, out: Path, tc: TrainConfig, resume: bool = False, max_episodes: int | None = None,
          state_dir: Path | None = None, init_from: Path | None = None,
          deadline: float | None = None, load_workers: int = 1, config=None) -> dict:
    """Train (see the module doc); ``config`` overrides the preset's config (tests, experiments)."""
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = get_preset(tc.preset) if config is None else config
    if tc.delta_action_dims is not None:
        cfg = cfg.replace(delta_action_dims=tc.delta_action_dims)
    tokenizer = SentencePieceTokenizer.small()
    t_load = time.time()
    eps = read_episodes_at(data, cfg.image_size, tuple(cfg.camera_slots), load_workers, max_episodes)
    init = load_trained(init_from, target=cfg) if init_from is not None else None
    same_actions = init is not None and Pi05Config.from_json(
        (Path(init_from) / "pi05_config.json").read_text()).delta_action_dims == cfg.delta_action_dims
    ds = FrameDataset(eps, cfg, tokenizer, norm_stats=init[2] if same_actions else None)
    del eps
    load_s = time.time() - t_load

    if init is not None:  # continue from a saved policy folder (weights and norm stats; optimizer restarts)
        if init[0] != cfg:
            raise ValueError(f"--init-from {init_from}: its config differs from preset {tc.preset!r}")
        model = init[1].to(device)
    else:
        model = Pi05Model(cfg).to(device)
        with torch.no_grad():  # adaRMS kernels start at zero (openpi): identity modulation, open gates
            for name, p in model.named_parameters():
                if ".dense." in name:
                    p.zero_()
    dev = ds.to(device)
    del ds.images  # the device copy is the one used from here on
    loop = TrainLoop(model, tc.loop())
    gen = device_generator(device, tc.seed)
    amp = device.type == "cuda"

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(dev), (tc.batch_size,), device=device, generator=gen)
        batch = make_batch(dev, idx, cfg, tc.shift_pad, gen)
        # noise and t ~ Beta(1.5, 1) * 0.999 + 0.001 drawn on the training device (inverse CDF: u^(1/1.5))
        noise = torch.randn(batch["actions"].shape, device=device, generator=gen)
        t = torch.rand((tc.batch_size,), device=device, generator=gen).pow(1.0 / 1.5) * 0.999 + 0.001
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            # openpi averages the loss over every (padded) action dim: the model then learns v = noise on the
            # padding too, so the padded dims follow t*noise while sampling, as in training.  Restricting the
            # loss to the robot dims leaves them drifting out of distribution (open-loop error +50 %).
            return model.flow_matching_loss(batch, noise=noise, t=t,
                                            loss_action_dims=ROBOT_DIMS if tc.robot_dims_loss else None)

    ckpt = (out if state_dir is None else state_dir) / "train_state.pt"
    train_s = run_with_checkpoint(loop, loss_fn, ckpt, device, resume, deadline)
    final = Pi05Model(cfg)
    final.load_state_dict(loop.ema_state())
    final.eval()
    log_data = train_log(asdict(tc), loop, train_s, frames=len(ds), batch_size=tc.batch_size, data=data,
                         load_s=load_s, device=device, params=final.num_parameters(), init_from=init_from)
    save_trained(out, final, ds.norm_stats, tokenizer, log_data)
    log.info("saved %s (%d steps, %.0f s)", out, loop.step, train_s)
    return log_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="LeRobot-style dataset folder (…/lerobot)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="pi05-small")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--delta-action-dims", type=int, default=None,
                    help="first k action dims relative to the state (default: the preset's)")
    ap.add_argument("--shift-pad", type=int, default=4, help="random-shift augmentation in pixels (0 = off)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-episodes", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--state-dir", type=Path, default=None, help="where train_state.pt goes (default: --out)")
    ap.add_argument("--load-workers", type=int, default=1, help="processes reading the dataset")
    ap.add_argument("--deadline", type=float, default=None,
                    help="stop training by this wall-clock time (seconds since the epoch), whatever --minutes says")
    ap.add_argument("--init-from", type=Path, default=None, help="start from this trained policy folder's weights")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tc = TrainConfig(preset=args.preset, batch_size=args.batch_size, lr=args.lr, minutes=args.minutes, seed=args.seed,
                     shift_pad=args.shift_pad, delta_action_dims=args.delta_action_dims)
    train(args.data, args.out, tc, resume=args.resume, max_episodes=args.max_episodes, state_dir=args.state_dir,
          init_from=args.init_from, deadline=args.deadline,
          load_workers=args.load_workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
