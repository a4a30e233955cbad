"""Train a small OpenVLA-OFT (``openvla-oft-small``) on simulated demonstrations.

    python -m actquant_core.train.openvla_oft --data DEMOS/lerobot --out runs/oft-small --minutes 8

The OFT recipe at small scale: parallel decoding of ``chunk * action_dim`` empty action slots, an L1
regression MLP head on their hidden states, actions and proprio normalised with bounds_q99 statistics to
[-1, 1].  Loss = L1 + ``nll_weight`` * NLL of the discretised action tokens through the LM head (upstream
OFT trains the L1 term only; the small NLL term keeps the LM head meaningful, so ActQuant's Action-Mixed
Fisher ``(1 - a) NLL + a L1`` has a language part to mix).  Images: the simulator's 224 px frames
area-downsampled to the preset's size (= the runtime's OpenCV resize), then OFT's training augmentation,
a random square crop of 90 % of the area resized back (the runtime takes the centre crop at test time).

Sim overrides of the preset: ``proprio_dim`` = 7 (q[6] + gripper), ``action_dim`` = 7 (absolute joint
targets + gripper), ``chunk`` = 8, 112 px images, MLP/projector widths 768 and head width 256 (16.6 M
parameters, so the bf16 checkpoint stays under 32 MiB), camera slots ``full_image`` (third person, the sim's
``base_0_rgb``) and ``wrist_image`` (``left_wrist_0_rgb``).

Output folder (read back with :func:`load_trained`; ``actquant quantize --checkpoint`` accepts it):
    oft_config.json, model-0000K-of-0000N.safetensors (canonical names, bf16, EMA weights),
    norm_stats.json (OftNormStats), tokenizer.model, train_log.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from actquant_core.constants import OFT_DINO_MEAN, OFT_DINO_STD, OFT_SIGLIP_MEAN, OFT_SIGLIP_STD, SIM_CAMERAS
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.openvla_oft.canonical import canonical_state_dict, model_from_canonical
from actquant_core.policies.openvla_oft.config import OftConfig, get_preset
from actquant_core.policies.openvla_oft.model import OftModel
from actquant_core.policies.openvla_oft.preprocess import (
    BoundsStats,
    OftNormStats,
    actions_to_token_ids,
    build_prompt_ids,
    build_sequence,
    normalize_bounds,
)
from actquant_core.train.common import (
    LoopConfig,
    TrainLoop,
    camera_frames,
    chunk_indices,
    device_generator,
    quantile_bounds,
    read_bf16_shards,
    read_episodes_at,
    run_with_checkpoint,
    train_log,
    write_bf16_shards,
)

log = logging.getLogger("actquant.train.openvla_oft")

ROBOT_DIMS = 7
CROP_AREA = 0.9  # OFT's random-resized-crop scale (and the runtime's centre crop)


def sim_config(preset: str = "openvla-oft-small") -> OftConfig:
    """The preset with the simulator's overrides (see the module doc)."""
    return get_preset(preset).replace(image_size=112, proprio_dim=ROBOT_DIMS, action_dim=ROBOT_DIMS, chunk=8,
                                      lm_mlp=768, dino_mlp=768, siglip_mlp=768, projector_hidden=768, head_hidden=256)


@dataclass(frozen=True)
class OftTrainConfig:
    """Training settings (saved in train_log.json).

    Attributes:
        preset: OftConfig preset name (sim overrides applied, see :func:`sim_config`).
        batch_size, lr, warmup_steps, weight_decay, minutes, ema, grad_clip: as ``LoopConfig``.
        seed: torch / numpy seed.
        nll_weight: weight of the action-token NLL next to the L1 loss.
        crop: random 90 %-area crop augmentation on/off.
    """

    preset: str = "openvla-oft-small"
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 300
    weight_decay: float = 1e-4
    minutes: float = 8.0
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    nll_weight: float = 0.1
    crop: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.nll_weight < 0:
            raise ValueError(f"OftTrainConfig: batch_size must be >= 1 and nll_weight >= 0, got {self}")
        self.loop()  # validates the loop settings

    def loop(self) -> LoopConfig:
        return LoopConfig(lr=self.lr, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                          minutes=self.minutes, ema=self.ema, grad_clip=self.grad_clip)


def bounds_stats(x: np.ndarray) -> BoundsStats:
    """bounds_q99 statistics of x [N, D] (every dimension normalised)."""
    _, _, q01, q99 = quantile_bounds(x)
    return BoundsStats(q01, q99, np.ones(x.shape[1], dtype=bool))


class OftFrames:
    """All frames in memory: uint8 images [N, I, S, S, 3] (slot order), normalised proprio [N, 7],
    normalised action chunks [N, chunk, 7], their token ids, and per-frame prompt index into ``sequences``."""

    def __init__(self, episodes, cfg: OftConfig, tokenizer: SentencePieceTokenizer,
                 norm_stats: OftNormStats | None = None) -> None:
        imgs, states, chunks, prompt_of = [], [], [], []
        prompts: dict[str, int] = {}
        for ep in episodes:
            missing = [c for c in SIM_CAMERAS if c not in ep.images]
            if missing:
                raise ValueError(f"episode {ep.index}: camera(s) {missing} missing; OFT needs {list(SIM_CAMERAS)}")
            T = len(ep)
            imgs.append(camera_frames(ep, SIM_CAMERAS, cfg.image_size))
            states.append(ep.state)
            chunks.append(ep.action[chunk_indices(T, cfg.chunk)])
            prompt_of += [prompts.setdefault(ep.instruction, len(prompts))] * T
        if not imgs:
            raise ValueError("no episodes in the dataset")
        self.images = np.concatenate(imgs)
        state = np.concatenate(states).astype(np.float32)
        actions = np.concatenate(chunks).astype(np.float32)
        self.norm_stats = norm_stats or OftNormStats(action=bounds_stats(actions.reshape(-1, ROBOT_DIMS)),
                                                     proprio=bounds_stats(state))
        self.proprio = normalize_bounds(state, self.norm_stats.proprio).astype(np.float32)
        self.actions = normalize_bounds(actions, self.norm_stats.action).astype(np.float32)
        self.action_ids = actions_to_token_ids(self.actions, cfg)
        seqs = [build_sequence(build_prompt_ids(tokenizer, text, cfg), cfg) for text in prompts]
        L = max(len(ids) for ids, _ in seqs)
        self.input_ids = np.full((len(seqs), L), cfg.pad_token_id, dtype=np.int64)
        self.attention_mask = np.zeros((len(seqs), L), dtype=bool)
        self.action_mask = np.zeros((len(seqs), L), dtype=bool)
        for i, (ids, amask) in enumerate(seqs):
            self.input_ids[i, : len(ids)] = ids
            self.attention_mask[i, : len(ids)] = True
            self.action_mask[i, : len(ids)] = amask
        self.prompt_of = np.asarray(prompt_of, dtype=np.int64)
        log.info("dataset: %d frames, %d instructions, %.1f GB of images", len(self), len(prompts),
                 self.images.nbytes / 1e9)

    def __len__(self) -> int:
        return int(self.prompt_of.shape[0])

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        names = ("images", "proprio", "actions", "action_ids", "input_ids", "attention_mask", "action_mask",
                 "prompt_of")
        return {n: torch.from_numpy(np.ascontiguousarray(getattr(self, n))).to(device) for n in names}


def crop_resize(x: torch.Tensor, offsets: torch.Tensor, area: float = CROP_AREA) -> torch.Tensor:
    """TF crop_and_resize of a square box covering ``area`` of each image, back to the input size.

    x [B, C, S, S] float in [0, 1]; offsets [B, 2] (y, x) in [0, 1 - sqrt(area)] (box origin, fraction of
    S - 1).  Sampling grid: in = off (S-1) + i side (S-1)/(S-1), bilinear — the same grid as
    ``policies.openvla_oft.preprocess.center_crop_resize`` with offsets (1 - side) / 2."""
    B, _, S, _ = x.shape
    side = math.sqrt(area)
    i = torch.arange(S, device=x.device, dtype=torch.float32)
    pix_y = offsets[:, 0:1] * (S - 1) + i[None] * side  # [B, S] pixel coordinates
    pix_x = offsets[:, 1:2] * (S - 1) + i[None] * side
    gy = pix_y / (S - 1) * 2 - 1
    gx = pix_x / (S - 1) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [B, S, S, 2] (x, y)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def make_batch(dev: dict[str, torch.Tensor], idx: torch.Tensor, cfg: OftConfig, crop: bool,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Gather a batch on the device: pixels [B, 6*I, S, S] (DINO then SigLIP normalisation per image)."""
    B = len(idx)
    device = idx.device
    img = dev["images"][idx].float().div_(255.0).permute(0, 1, 4, 2, 3)  # [B, I, 3, S, S]
    side = math.sqrt(CROP_AREA)
    chans = []
    dmean = torch.tensor(OFT_DINO_MEAN, device=device)[:, None, None]
    dstd = torch.tensor(OFT_DINO_STD, device=device)[:, None, None]
    smean = torch.tensor(OFT_SIGLIP_MEAN, device=device)[:, None, None]
    sstd = torch.tensor(OFT_SIGLIP_STD, device=device)[:, None, None]
    for j in range(img.shape[1]):
        x = img[:, j]
        if crop:
            off = torch.rand((B, 2), device=device, generator=generator) * (1 - side)
            x = crop_resize(x, off).clamp_(0.0, 1.0)
        chans += [(x - dmean) / dstd, (x - smean) / sstd]
    p = dev["prompt_of"][idx]
    return {
        "pixels": torch.cat(chans, dim=1),
        "proprio": dev["proprio"][idx],
        "input_ids": dev["input_ids"][p],
        "attention_mask": dev["attention_mask"][p],
        "action_mask": dev["action_mask"][p],
        "actions": dev["actions"][idx],
        "action_token_ids": dev["action_ids"][idx],
    }


def save_trained(out: Path, model: OftModel, norm_stats: OftNormStats, tokenizer: SentencePieceTokenizer,
                 log_data: dict) -> None:
    write_bf16_shards(out, canonical_state_dict(model, include_lm_head=True), "actquant-canonical-oft")
    (out / "oft_config.json").write_text(model.config.to_json())
    (out / "norm_stats.json").write_text(norm_stats.to_json())
    (out / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    (out / "train_log.json").write_text(json.dumps(log_data, indent=1))


def load_trained(path: str | Path) -> tuple[OftConfig, OftModel, OftNormStats, SentencePieceTokenizer]:
    """Loads a folder written by :func:`save_trained`."""
    path = Path(path)
    for f in ("oft_config.json", "norm_stats.json"):
        if not (path / f).exists():
            raise FileNotFoundError(f"{path}: missing {f} (not a trained openvla-oft folder)")
    cfg = OftConfig.from_json((path / "oft_config.json").read_text())
    model = model_from_canonical(cfg, read_bf16_shards(path)).eval()
    ns = OftNormStats.from_json((path / "norm_stats.json").read_text())
    tok_file = path / "tokenizer.model"
    tok = (SentencePieceTokenizer(tok_file.read_bytes(), source=str(tok_file)) if tok_file.exists()
           else SentencePieceTokenizer.small())
    return cfg, model, ns, tok


def train(data: Path, out: Path, tc: OftTrainConfig, resume: bool = False, max_episodes: int | None = None,
          state_dir: Path | None = None, init_from: Path | None = None,
          deadline: float | None = None, load_workers: int = 1, config=None) -> dict:
    """Train (see the module doc); ``config`` overrides the preset's config (tests, experiments)."""
    torch.manual_seed(tc.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = sim_config(tc.preset) if config is None else config
    tokenizer = SentencePieceTokenizer.small()
    t_load = time.time()
    eps = read_episodes_at(data, cfg.image_size, tuple(SIM_CAMERAS), load_workers, max_episodes)
    init = load_trained(init_from) if init_from is not None else None
    ds = OftFrames(eps, cfg, tokenizer, norm_stats=init[2] if init else None)
    del eps
    dev = ds.to(device)
    load_s = time.time() - t_load
    if init is not None:
        if init[0] != cfg:
            raise ValueError(f"--init-from {init_from}: its config differs from {cfg}")
        model = init[1].to(device)
    else:
        model = OftModel(cfg).init_random(tc.seed).to(device)
    loop = TrainLoop(model, tc.loop())
    gen = device_generator(device, tc.seed)
    amp = device.type == "cuda"

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(ds), (tc.batch_size,), device=device, generator=gen)
        batch = make_batch(dev, idx, cfg, tc.crop, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = model.losses(batch, with_nll=tc.nll_weight > 0)
        loss = losses["l1"]
        if tc.nll_weight > 0:
            loss = loss + tc.nll_weight * losses["nll"]
        return loss

    ckpt = (out if state_dir is None else state_dir) / "train_state_oft.pt"
    train_s = run_with_checkpoint(loop, loss_fn, ckpt, device, resume, deadline)
    final = OftModel(cfg)
    final.load_state_dict(loop.ema_state())
    final.eval()
    log_data = train_log(asdict(tc), loop, train_s, frames=len(ds), batch_size=tc.batch_size, data=data,
                         load_s=load_s, device=device, params=final.num_parameters(), init_from=init_from,
                         config=cfg.to_dict())
    save_trained(out, final, ds.norm_stats, tokenizer, log_data)
    log.info("saved %s (%d steps, %.0f s)", out, loop.step, train_s)
    return log_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="LeRobot-style dataset folder (…/lerobot)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="openvla-oft-small")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--nll-weight", type=float, default=0.1)
    ap.add_argument("--no-crop", action="store_true", help="disable the random-crop augmentation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-episodes", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--load-workers", type=int, default=1, help="processes reading the dataset")
    ap.add_argument("--deadline", type=float, default=None,
                    help="stop training by this wall-clock time (seconds since the epoch), whatever --minutes says")
    ap.add_argument("--init-from", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tc = OftTrainConfig(preset=args.preset, batch_size=args.batch_size, lr=args.lr, minutes=args.minutes,
                        seed=args.seed, nll_weight=args.nll_weight, crop=not args.no_crop)
    train(args.data, args.out, tc, resume=args.resume, max_episodes=args.max_episodes, state_dir=args.state_dir,
          init_from=args.init_from, deadline=args.deadline,
          load_workers=args.load_workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
