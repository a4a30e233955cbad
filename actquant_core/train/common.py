"""Pieces shared by the small-policy trainers (``train.pi05``, ``train.openvla_oft``).

* :func:`area_downsample` (from ``policies.common.image``) — integer-factor downsampling, bit-exact with
  OpenCV's ``INTER_AREA`` that the runtimes use, so the policy sees identical pixels in training and at run
  time (the GPU machine has no OpenCV).
* :func:`random_shift` — DrQ-style augmentation: replicate-pad by ``pad`` pixels, crop back at a random
  offset per sample (on the training device).
* :class:`TrainLoop` — the time-boxed optimisation loop: AdamW, linear warm-up then a cosine over the time
  box, gradient clipping, EMA weights (foreach ops), loss history, checkpoint/resume state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actquant_core.policies.common.image import area_downsample

log = logging.getLogger("actquant.train")


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings of :class:`TrainLoop` (saved in each trainer's train_log.json).

    Attributes:
        lr: peak AdamW learning rate; ``warmup_steps`` linear warm-up, then a cosine over the time box down
            to ``lr * final_lr_frac``.
        weight_decay: AdamW weight decay.
        minutes: wall-clock time box.
        ema: EMA decay of the saved weights (0 disables).
        grad_clip: max global gradient norm.
        final_lr_frac: learning rate at the end of the time box, as a fraction of ``lr``.
    """

    lr: float = 3e-4
    warmup_steps: int = 300
    weight_decay: float = 1e-4
    minutes: float = 8.0
    ema: float = 0.999
    grad_clip: float = 1.0
    final_lr_frac: float = 0.05

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.minutes <= 0 or self.warmup_steps < 1 or self.grad_clip <= 0:
            raise ValueError(f"LoopConfig: lr, minutes, grad_clip must be > 0 and warmup_steps >= 1, got {self}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"LoopConfig.ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.final_lr_frac <= 1.0:
            raise ValueError(f"LoopConfig.final_lr_frac must be in [0, 1], got {self.final_lr_frac}")


def _read_shard(args: tuple[Path, int, int, int, tuple[str, ...]]) -> list:
    from actquant_core.sim.episodes import read_lerobot

    root, k, n, size, cameras = args
    out = []
    for ep in read_lerobot(root, shard=(k, n)):
        ep.images = {c: area_downsample(ep.images[c], downsample_factor(ep.images[c].shape[-2], size))
                     for c in cameras if c in ep.images}
        out.append(ep)
    return out


def read_episodes_at(root: Path, image_size: int, cameras: tuple[str, ...], workers: int = 1,
                     max_episodes: int | None = None, cache_dir: Path | str | None = None) -> list:
    """Episodes of a LeRobot-style dataset with camera frames area-downsampled to ``image_size``, read by
    ``workers`` processes in parallel (decompression dominates); dataset order is kept.

    ``cache_dir`` (default: ``$ACTQUANT_FRAME_CACHE``, unset = no cache): the downsampled episodes are saved
    there as raw ``.npy`` arrays on the first read and memory-mapped on later reads of the same dataset (its
    meta files' size and mtime must match), so a resumed training run does not decode the dataset again."""
    import os

    cache_dir = cache_dir if cache_dir is not None else os.environ.get("ACTQUANT_FRAME_CACHE") or None
    if cache_dir is None:
        return _read_episodes(Path(root), image_size, cameras, workers)[: max_episodes or None]
    cameras = _recorded_cameras(Path(root), cameras)  # one cache entry whichever unrecorded slots are asked for
    cached = _load_frame_cache(Path(cache_dir), Path(root), image_size, cameras)
    if cached is None:
        cached = _read_episodes(Path(root), image_size, cameras, workers)
        _save_frame_cache(Path(cache_dir), Path(root), image_size, cameras, cached)
    return cached[: max_episodes or None]


def _recorded_cameras(root: Path, cameras: tuple[str, ...]) -> tuple[str, ...]:
    """``cameras`` that the dataset records (``meta/info.json`` "cameras"; all of them if it does not say)."""
    import json

    info = root / "meta" / "info.json"
    recorded = json.loads(info.read_text()).get("cameras") if info.is_file() else None
    return tuple(c for c in cameras if recorded is None or c in recorded)


def _cache_key(root: Path, image_size: int, cameras: tuple[str, ...]) -> tuple[str, dict]:
    import hashlib
    import json

    meta = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted((root / "meta").glob("*"))
            if p.is_file()}
    ident = {"root": str(root.resolve()), "image_size": image_size, "cameras": list(cameras), "meta": meta}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16], ident


def _save_frame_cache(cache: Path, root: Path, image_size: int, cameras: tuple[str, ...], eps: list) -> None:
    import json

    from actquant_core.sim.episodes import Episode

    key, ident = _cache_key(root, image_size, cameras)
    d = cache / key
    tmp = cache / f"{key}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for c in cameras:
        np.save(tmp / f"img_{c}.npy", np.concatenate([e.images[c] for e in eps]))
    np.save(tmp / "state.npy", np.concatenate([e.state for e in eps]).astype(np.float32))
    np.save(tmp / "action.npy", np.concatenate([e.action for e in eps]).astype(np.float32))
    fields = [f for f in Episode.__dataclass_fields__ if f not in ("images", "state", "action", "action_chunks")]
    rows = [{f: getattr(e, f) for f in fields} | {"length": len(e.state)} for e in eps]
    (tmp / "episodes.json").write_text(json.dumps({"ident": ident, "episodes": rows},
                                                     default=lambda o: o.item()))
    tmp.rename(d)
    log.info("frame cache written: %s (%d episodes)", d, len(eps))


def _load_frame_cache(cache: Path, root: Path, image_size: int, cameras: tuple[str, ...]) -> list | None:
    import json

    from actquant_core.sim.episodes import Episode

    key, ident = _cache_key(root, image_size, cameras)
    d = cache / key
    if not (d / "episodes.json").is_file():
        return None
    meta = json.loads((d / "episodes.json").read_text())
    if meta["ident"] != ident:
        return None
    imgs = {c: np.load(d / f"img_{c}.npy", mmap_mode="r") for c in cameras}
    state, action = np.load(d / "state.npy"), np.load(d / "action.npy")
    eps, t = [], 0
    for row in meta["episodes"]:
        n = row.pop("length")
        eps.append(Episode(images={c: v[t:t + n] for c, v in imgs.items()}, state=state[t:t + n],
                           action=action[t:t + n], **row))
        t += n
    log.info("frame cache read: %s (%d episodes)", d, len(eps))
    return eps


def _read_episodes(root: Path, image_size: int, cameras: tuple[str, ...], workers: int) -> list:
    n = max(1, workers)
    if n == 1:
        eps = _read_shard((Path(root), 0, 1, image_size, cameras))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n) as pool:
            shards = pool.map(_read_shard, [(Path(root), k, n, image_size, cameras) for k in range(n)])
        eps = [None] * sum(len(s) for s in shards)
        for k, shard in enumerate(shards):
            for j, ep in enumerate(shard):
                eps[k + j * n] = ep
    return eps


def camera_frames(ep, cameras: tuple[str, ...], image_size: int) -> np.ndarray:
    """uint8 [T, ncam, S, S, 3] of an episode's cameras at ``image_size`` (area-downsampled when larger)."""
    frames = np.stack([ep.images[c] for c in cameras], axis=1)
    if frames.shape[-2] == image_size:
        return frames
    return area_downsample(frames, downsample_factor(frames.shape[-2], image_size))


def downsample_factor(source: int, target: int) -> int:
    """The integer factor taking a ``source`` px image to ``target`` px (error if there is none)."""
    if target <= 0 or source % target:
        raise ValueError(f"camera images are {source} px; the policy takes {target} px, not an integer downscale")
    return source // target


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H, W]: replicate-pad by ``pad`` then crop at a random integer offset per sample."""
    if pad <= 0:
        return x
    B, C, H, W = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (B,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (B,), device=x.device, generator=generator)
    rows = (torch.arange(H, device=x.device)[None, :] + dy[:, None])  # [B, H]
    cols = (torch.arange(W, device=x.device)[None, :] + dx[:, None])  # [B, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class TrainLoop:
    """Time-boxed training of ``model`` with ``loss_fn(step) -> scalar loss``.

    ``run()`` returns the history (one entry per ``log_every`` steps: step, mean loss, lr, seconds).
    ``ema_state()`` gives the EMA weights (or the raw weights when EMA is off); ``save_state``/``load_state``
    keep model, EMA, optimizer, step and history so a run can continue in another session.
    """

    def __init__(self, model: torch.nn.Module, cfg: LoopConfig, log_every: int = 100) -> None:
        self.model = model
        self.cfg = cfg
        self.log_every = log_every
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        self.step = 0
        self.history: list[dict] = []
        self._ema_keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        self.ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def lr_at(self, progress: float) -> float:
        c = self.cfg
        warm = min(1.0, (self.step + 1) / c.warmup_steps)
        cos = c.final_lr_frac + (1.0 - c.final_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return c.lr * warm * cos

    def run(self, loss_fn: Callable[[int], torch.Tensor], deadline: float | None = None) -> list[dict]:
        """Train until the time box (or the wall-clock ``deadline``, a ``time.time()`` value, if earlier)."""
        c = self.cfg
        t0 = time.time()
        budget = c.minutes * 60.0 if deadline is None else min(c.minutes * 60.0, deadline - t0)
        if budget <= 0:
            raise ValueError(f"no training time left before the deadline ({deadline - t0:.0f} s)")
        losses: list[torch.Tensor] = []
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        while True:
            el = time.time() - t0
            if el >= budget:
                break
            lr = self.lr_at(el / budget)
            for g in self.opt.param_groups:
                g["lr"] = lr
            loss = loss_fn(self.step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            self.opt.step()
            self.step += 1
            if c.ema > 0:
                self._update_ema()
            losses.append(loss.detach())
            if self.step % self.log_every == 0:
                mean = float(torch.stack(losses).float().mean())
                if not math.isfinite(mean):
                    raise FloatingPointError(f"training loss is {mean} at step {self.step}")
                self.history.append({"step": self.step, "loss": mean, "lr": lr, "t": time.time() - t0})
                log.info("step %d loss %.4f lr %.2e (%.0f s)", self.step, mean, lr, time.time() - t0)
                losses = []
        return self.history

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        sd = self.model.state_dict()
        ema = [self.ema[k] for k in self._ema_keys]
        cur = [sd[k].detach().float() for k in self._ema_keys]
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, cur, alpha=1.0 - d)

    def ema_state(self) -> dict[str, torch.Tensor]:
        """EMA weights on the CPU (float32), or the current weights when EMA is off."""
        src = self.ema if self.cfg.ema > 0 else {k: v.float() for k, v in self.model.state_dict().items()}
        return {k: v.detach().cpu() for k, v in src.items()}

    def save_state(self, path: Path) -> None:
        torch.save({"model": self.model.state_dict(), "ema": self.ema, "opt": self.opt.state_dict(),
                    "step": self.step, "history": self.history}, path)

    def load_state(self, path: Path, device: torch.device) -> None:
        state = torch.load(path, map_location=device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.ema = {k: v.to(device) for k, v in state["ema"].items()}
        self.opt.load_state_dict(state["opt"])
        log.info("resumed from step %d", self.step)


SHARD_BYTES = 12 * 2**20  # each shard fits the GPU machine's per-file transfer limit


def write_bf16_shards(out: Path, tensors: dict[str, np.ndarray], fmt: str) -> list[Path]:
    """Write float tensors as bf16 safetensors shards ``model-0000K-of-0000N.safetensors`` (<= SHARD_BYTES
    each), replacing old shards in ``out``.  bf16 is stored as uint16 bit patterns (metadata dtype bfloat16)."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors"):
        old.unlink()
    bf16 = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(torch.bfloat16).view(torch.uint16).numpy()
            for k, v in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in bf16.items():
        if size + v.nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    paths = []
    for i, shard in enumerate(shards):
        p = out / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(p), metadata={"dtype": "bfloat16", "format": fmt})
        paths.append(p)
    return paths


def read_bf16_shards(path: Path) -> dict[str, np.ndarray]:
    """Inverse of :func:`write_bf16_shards`: name -> float32 array."""
    from safetensors.numpy import load_file

    shards = sorted(Path(path).glob("model-*-of-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}: no model-*-of-*.safetensors (not a trained policy folder)")
    raw: dict[str, np.ndarray] = {}
    for shard in shards:
        raw.update(load_file(str(shard)))
    return {k: torch.from_numpy(v.astype(np.uint16)).view(torch.bfloat16).float().numpy() for k, v in raw.items()}


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on the training device (batch indices, noise, augmentation)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def run_with_checkpoint(loop: TrainLoop, loss_fn: Callable[[int], torch.Tensor], ckpt: Path, device: torch.device,
                        resume: bool = False, deadline: float | None = None) -> float:
    """Resume ``loop`` from ``ckpt`` (when asked and present), run it, save its state back; returns train seconds."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if resume and ckpt.exists():
        loop.load_state(ckpt, device)
    t0 = time.time()
    loop.run(loss_fn, deadline=deadline)
    train_s = time.time() - t0
    loop.save_state(ckpt)
    return train_s


def train_log(train_config: dict, loop: TrainLoop, train_s: float, *, frames: int, batch_size: int, data: Path,
              load_s: float, device: torch.device, params: int, init_from: Path | None, **extra) -> dict:
    """The ``train_log.json`` record of a run: settings, steps, throughput, wall times, device, loss curve."""
    return {
        "train_config": train_config, **extra, "steps": loop.step, "frames": frames, "episodes_dir": str(data),
        "frames_per_s": loop.step * batch_size / max(train_s, 1e-9), "load_s": load_s, "train_s": train_s,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "history": loop.history, "params": params, "init_from": str(init_from) if init_from else None,
    }


def quantile_bounds(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, q01, q99) per dimension of x [N, D], float32."""
    return (x.mean(0).astype(np.float32), x.std(0).astype(np.float32),
            np.quantile(x, 0.01, axis=0).astype(np.float32), np.quantile(x, 0.99, axis=0).astype(np.float32))


def chunk_indices(T: int, horizon: int) -> np.ndarray:
    """[T, horizon] indices of each frame's next ``horizon`` actions, padded with the last one."""
    return np.minimum(np.arange(T)[:, None] + np.arange(horizon)[None, :], T - 1)
