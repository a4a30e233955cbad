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
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from actquant_core.policies.common.normalize import FeatureStats, NormStats
from actquant_core.policies.common.tokenizer import SentencePieceTokenizer
from actquant_core.policies.pi05.canonical import canonical_state_dict, model_from_canonical
from actquant_core.policies.pi05.config import Pi05Config, get_preset
from actquant_core.policies.pi05.model import Pi05Model
from actquant_core.policies.pi05.preprocess import Pi05Preprocessor

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
    """

    preset: str = "pi05-small"
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 300
    weight_decay: float = 1e-4
    minutes: float = 8.0
    ema: float = 0.999
    seed: int = 0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.minutes <= 0:
            raise ValueError(f"TrainConfig: batch_size, lr and minutes must be positive, got {self}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"TrainConfig.ema must be in [0, 1), got {self.ema}")


def quantile_stats(x: np.ndarray) -> FeatureStats:
    """q01/q99/mean/std per dimension of x [N, D]."""
    return FeatureStats(
        mean=x.mean(0).astype(np.float32), std=x.std(0).astype(np.float32),
        q01=np.quantile(x, 0.01, axis=0).astype(np.float32), q99=np.quantile(x, 0.99, axis=0).astype(np.float32),
    )


class FrameDataset:
    """All frames of a dataset in memory: uint8 images, tokens, normalised state and action chunks."""

    def __init__(self, episodes, cfg: Pi05Config, tokenizer: SentencePieceTokenizer,
                 norm_stats: NormStats | None = None) -> None:
        imgs, states, chunks, instr = [], [], [], []
        H = cfg.action_horizon
        self.cameras: tuple[str, ...] | None = None
        for ep in episodes:
            if self.cameras is None:
                self.cameras = tuple(c for c in cfg.camera_slots if c in ep.images)
            T = len(ep)
            idx = np.minimum(np.arange(T)[:, None] + np.arange(H)[None, :], T - 1)
            chunks.append(ep.action[idx])  # [T, H, 7]
            states.append(ep.state)
            imgs.append(np.stack([ep.images[c] for c in self.cameras], axis=1))  # [T, ncam, S, S, 3]
            instr += [ep.instruction] * T
        if not imgs:
            raise ValueError("no episodes in the dataset")
        self.images = np.concatenate(imgs)
        state = np.concatenate(states).astype(np.float32)
        actions = np.concatenate(chunks).astype(np.float32)
        self.norm_stats = norm_stats or NormStats(
            state=quantile_stats(state), actions=quantile_stats(actions.reshape(-1, ROBOT_DIMS)))
        pre = Pi05Preprocessor(cfg, tokenizer, self.norm_stats)
        self.actions = pre.normalize_actions(actions)  # [N, H, 32]
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


def make_batch(ds: FrameDataset, idx: np.ndarray, cfg: Pi05Config, device: torch.device) -> dict[str, torch.Tensor]:
    """Images uint8 -> [-1, 1] on the device (same formula as policies.common.image.uint8_to_signed_unit)."""
    B = len(idx)
    img = torch.from_numpy(ds.images[idx]).to(device, non_blocking=True)  # [B, ncam, S, S, 3] uint8
    x = img.float() * (2.0 / 255.0) - 1.0
    x = x.permute(0, 1, 4, 2, 3)  # [B, ncam, 3, S, S]
    images = torch.full((B, cfg.num_cameras, 3, cfg.image_size, cfg.image_size), -1.0, device=device)
    masks = torch.zeros((B, cfg.num_cameras), dtype=torch.bool, device=device)
    for j, slot in enumerate(ds.slot_index):
        images[:, slot] = x[:, j]
        masks[:, slot] = True
    return {
        "images": images,
        "image_masks": masks,
        "tokens": torch.from_numpy(ds.tokens[idx]).to(device),
        "token_masks": torch.from_numpy(ds.token_masks[idx]).to(device),
        "actions": torch.from_numpy(ds.actions[idx]).to(device),
    }


SHARD_BYTES = 12 * 2**20


def save_trained(out: Path, model: Pi05Model, norm_stats: NormStats, tokenizer: SentencePieceTokenizer,
                 log_data: dict) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors"):
        old.unlink()
    tensors = canonical_state_dict(model)
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16).view(torch.uint16).numpy() for k, v in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in bf16.items():
        if size + v.nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    for i, shard in enumerate(shards):
        save_file(shard, str(out / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"),
                  metadata={"dtype": "bfloat16", "format": "actquant-canonical"})
    (out / "pi05_config.json").write_text(model.config.to_json())
    (out / "norm_stats.json").write_text(norm_stats.to_json())
    (out / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    (out / "train_log.json").write_text(json.dumps(log_data, indent=1))


def load_trained(path: str | Path) -> tuple[Pi05Config, Pi05Model, NormStats, SentencePieceTokenizer]:
    """Loads a folder written by ``save_trained`` (the bundled small policies use this format)."""
    from safetensors.numpy import load_file

    path = Path(path)
    for f in ("pi05_config.json", "norm_stats.json", "tokenizer.model"):
        if not (path / f).exists():
            raise FileNotFoundError(f"{path}: missing {f} (not a trained pi05 folder)")
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}: no model-*-of-*.safetensors (not a trained pi05 folder)")
    cfg = Pi05Config.from_json((path / "pi05_config.json").read_text())
    raw: dict[str, np.ndarray] = {}
    for shard in shards:
        raw.update(load_file(str(shard)))
    tensors = {k: torch.from_numpy(v.astype(np.uint16)).view(torch.bfloat16).float().numpy() for k, v in raw.items()}
    model = model_from_canonical(cfg, tensors)
    ns = NormStats.from_json((path / "norm_stats.json").read_text())
    tok = SentencePieceTokenizer((path / "tokenizer.model").read_bytes(), source=str(path / "tokenizer.model"))
    return cfg, model, ns, tok


def train(data: Path, out: Path, tc: TrainConfig, resume: bool = False, max_episodes: int | None = None,
          state_dir: Path | None = None, init_from: Path | None = None) -> dict:
    from actquant_core.sim.episodes import read_lerobot

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = get_preset(tc.preset)
    tokenizer = SentencePieceTokenizer.small()
    t_load = time.time()
    eps = list(read_lerobot(data))
    if max_episodes:
        eps = eps[:max_episodes]
    init = load_trained(init_from) if init_from is not None else None
    ds = FrameDataset(eps, cfg, tokenizer, norm_stats=init[2] if init else None)
    del eps
    load_s = time.time() - t_load

    if init is not None:  # continue from a saved policy folder (weights and norm stats; optimizer restarts)
        if init[0] != cfg:
            raise ValueError(f"--init-from {init_from}: its config differs from preset {tc.preset!r}")
        model = init[1].to(device)
    else:
        model = Pi05Model(cfg).to(device)
    with torch.no_grad():  # adaRMS kernels start at zero (openpi): identity modulation, open gates... as in openpi
        for name, p in model.named_parameters():
            if ".dense." in name and init_from is None:
                p.zero_()
    step0, history = 0, []
    state_dir = out if state_dir is None else state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt = state_dir / "train_state.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        step0, history = int(state["step"]), list(state["history"])
        log.info("resumed from step %d", step0)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    if resume and ckpt.exists() and "ema" in state:
        ema = {k: v.to(device) for k, v in state["ema"].items()}
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95))
    if resume and ckpt.exists() and "opt" in state:
        opt.load_state_dict(state["opt"])
    amp = device.type == "cuda"
    t0 = time.time()
    budget = tc.minutes * 60.0
    step = step0
    losses = []
    model.train()
    while True:
        el = time.time() - t0
        if el >= budget:
            break
        progress = el / budget
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(ds), tc.batch_size)
        batch = make_batch(ds, idx, cfg, device)
        # noise and t ~ Beta(1.5, 1) * 0.999 + 0.001 drawn on the training device (inverse CDF: u^(1/1.5))
        noise = torch.randn(batch["actions"].shape, device=device)
        t = torch.rand((len(idx),), device=device).pow(1.0 / 1.5) * 0.999 + 0.001
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.flow_matching_loss(batch, noise=noise, t=t, loss_action_dims=ROBOT_DIMS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        if tc.ema > 0:
            with torch.no_grad():
                d = min(tc.ema, (1 + step) / (10 + step))
                for k, v in model.state_dict().items():
                    ema[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            history.append({"step": step, "loss": float(np.mean(losses)), "lr": lr, "t": time.time() - t0})
            log.info("step %d loss %.4f lr %.2e (%.0f s)", step, np.mean(losses), lr, time.time() - t0)
            losses = []
    train_s = time.time() - t0
    torch.save({"model": model.state_dict(), "ema": ema, "opt": opt.state_dict(), "step": step, "history": history}, ckpt)
    final = Pi05Model(cfg)
    final.load_state_dict({k: v.cpu() for k, v in (ema if tc.ema > 0 else model.state_dict()).items()})
    final.eval()
    log_data = {
        "train_config": asdict(tc), "steps": step, "frames": len(ds), "episodes_dir": str(data),
        "load_s": load_s, "train_s": train_s, "device": torch.cuda.get_device_name() if amp else "cpu",
        "history": history, "params": final.num_parameters(), "init_from": str(init_from) if init_from else None,
    }
    save_trained(out, final, ds.norm_stats, tokenizer, log_data)
    log.info("saved %s (%d steps, %.0f s)", out, step, train_s)
    return log_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="LeRobot-style dataset folder (…/lerobot)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="pi05-small")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-episodes", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--state-dir", type=Path, default=None, help="where train_state.pt goes (default: --out)")
    ap.add_argument("--init-from", type=Path, default=None, help="start from this trained policy folder's weights")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tc = TrainConfig(preset=args.preset, batch_size=args.batch_size, lr=args.lr, minutes=args.minutes, seed=args.seed)
    train(args.data, args.out, tc, resume=args.resume, max_episodes=args.max_episodes, state_dir=args.state_dir,
          init_from=args.init_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
