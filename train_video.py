"""Train the video DiT with rectified flow on NaViT-packed rows, under DeepSpeed ZeRO.

    deepspeed --num_accelerators 2 train_video.py --config configs/debug.yaml --set train.max_steps=20
    python train_video.py --config configs/debug.yaml          (one rank)

Data: raw videos from `data.manifest` (decoded, VAE- and text-encoded on the fly) or a latent cache
from `python -m data.precache` (`data.cache`). Checkpoints under `<output_dir>/checkpoints/<tag>/`:
DeepSpeed's own state (resume) plus per-rank loader position and RNG, the EMA state, and the EMA weights
as a `save_dit` folder (`ema/`) that `generate.py --ckpt` loads; `checkpoints/latest` names the last
complete one and is replaced atomically after everything else is written, so a kill mid-save leaves
the previous checkpoint in charge. `<output_dir>/ema` is the newest EMA export.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.loader import PackedLoader
from data.precache import LatentCache
from data.sampling import SamplingConfig
from videodit.checkpoint import save_dit
from videodit.config import load_config, to_dict
from videodit.distributed import (
    DeepSpeedConfig,
    all_gather_object,
    any_rank,
    barrier,
    deepspeed_config,
    device_for,
    gathered,
    init_distributed,
    mean_over_ranks,
    sum_over_ranks,
)
from videodit.ema import EMA
from videodit.flow import FlowConfig, flow_loss
from videodit.model import DiTConfig, VideoDiT

log = logging.getLogger("train_video")


@dataclass
class DataConfig:
    manifest: str = ""  # CSV / JSONL / folder of clips (raw videos, encoded on the fly)
    cache: str = ""  # latent cache folder from data.precache; used instead of the manifest when set
    vae: str = "default"  # vae3d.load_vae name/path (raw mode; recorded in checkpoints)
    text_encoder: str = "default"  # videodit.text_encoder name/path
    row_tokens: int = 1024  # token budget of one packed row (= one micro-batch per rank)
    min_tokens: int = 64  # per-clip random token target lies in [min_tokens, max_tokens]
    max_tokens: int = 1024
    target_fps: float = 8.0
    min_frames: int = 1
    max_frames: int = 33
    window: int = 32  # samples planned into rows together

    def __post_init__(self):
        if self.max_tokens > self.row_tokens:
            raise ValueError(f"data.max_tokens ({self.max_tokens}) must be <= data.row_tokens "
                             f"({self.row_tokens}): one clip must fit in a row")


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 1000  # optimizer steps; the lr schedule ends here
    stop_step: int = -1  # end this run after this step (with a checkpoint); -1 = max_steps
    seed: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100  # linear warm-up from 0
    # Cosine decay of the lr from decay_start to max_steps, down to lr * min_lr_ratio (-1: constant lr).
    # A resumed run may switch it on: the schedule is a function of the step, not of the run's history.
    decay_start: int = -1
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.999
    token_drop: float = 0.0  # NaViT token dropping rate during training
    log_every: int = 10
    save_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    resume: bool = True  # continue from <output_dir>/checkpoints/latest if present
    # Start a NEW run from the weights of a `save_dit` folder (e.g. another run's ema/) instead of random
    # init; shapes must match. If its `prediction` differs from model.prediction, the output head is
    # zeroed (it is relearned). Ignored when resuming (the checkpoint wins).
    init_from: str = ""
    sample_every: int = 0  # write sample videos with the EMA model every N steps (0 = off)
    sample_prompts: tuple[str, ...] = ("a red ball bouncing",)
    sample_size: tuple[int, int, int] = (5, 32, 32)  # frames, height, width of sample videos

    def __post_init__(self):
        if self.max_steps < 0 or self.warmup_steps < 0:
            raise ValueError(f"train.max_steps and warmup_steps must be >= 0, "
                             f"got {self.max_steps}, {self.warmup_steps}")
        if self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("train.log_every and train.keep_checkpoints must be >= 1")
        if not (self.stop_step == -1 or 1 <= self.stop_step <= self.max_steps):
            raise ValueError(f"train.stop_step must be -1 or in [1, max_steps = {self.max_steps}], "
                             f"got {self.stop_step}")
        if self.decay_start >= 0 and self.decay_start >= self.max_steps:
            raise ValueError(f"train.decay_start ({self.decay_start}) must be < max_steps ({self.max_steps}) "
                             f"or -1 (no decay)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class RunConfig:
    model: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self):
        if self.flow.pixel_weight > 0 and self.train.token_drop > 0:
            raise ValueError("flow.pixel_weight > 0 needs train.token_drop 0 (a dropped token has no x0 "
                             f"prediction to decode), got token_drop {self.train.token_drop}")


# ------------------------------------------------------------------ pieces of main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file (only what differs from the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. train.max_steps=10 (repeatable)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    return p.parse_args(argv)


def setup_logging(out: Path, rank: int) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / "train.log"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def build_data(cfg: RunConfig, rank: int, world: int, device: torch.device):
    """-> (loader, encoders) where encoders = (vae, text_encoder) in raw mode, None with a cache."""
    if cfg.data.cache:
        source = LatentCache(cfg.data.cache, patch=cfg.model.patch)
        encoders = None
    elif cfg.data.manifest:
        from data.dataset import VideoDataset
        from vae3d.io import load_vae
        from videodit.text_encoder import TextEncoder

        vae = load_vae(cfg.data.vae, device=device).eval().requires_grad_(False)
        text_encoder = TextEncoder(cfg.data.text_encoder, device=device)
        if vae.latent_channels != cfg.model.in_channels or text_encoder.dim != cfg.model.text_dim:
            raise ValueError(
                f"model.in_channels={cfg.model.in_channels} / model.text_dim={cfg.model.text_dim} "
                f"do not match "
                f"the VAE's {vae.latent_channels} latent channels / the text encoder's dim {text_encoder.dim}"
            )
        d = cfg.data
        sampling = SamplingConfig(temporal_stride=vae.temporal_stride, spatial_stride=vae.spatial_stride,
                                  patch=cfg.model.patch, min_tokens=d.min_tokens, max_tokens=d.max_tokens,
                                  target_fps=d.target_fps, min_frames=d.min_frames, max_frames=d.max_frames)
        source = VideoDataset(d.manifest, sampling, seed=cfg.train.seed)  # manifest errors raise here
        encoders = (vae, text_encoder)
    else:
        raise ValueError("set data.manifest (raw videos) or data.cache (latent cache folder)")
    loader = PackedLoader(source, cfg.data.row_tokens, seed=cfg.train.seed, rank=rank, world_size=world,
                          window=cfg.data.window)
    return loader, encoders


def cache_index(cfg: RunConfig) -> dict | None:
    """The latent cache's index.json (its VAE, text encoder and samples), or None without a cache."""
    return json.loads((Path(cfg.data.cache) / "index.json").read_text()) if cfg.data.cache else None


def build_pixel_decoder(cfg: RunConfig, device):
    """`flow.pixel_weight` > 0: the frozen decoder of the run's VAE (the cache's, else data.vae), without its
    pixel refiner (`decode_coarse`), for flow_loss's pixel term; else None."""
    if cfg.flow.pixel_weight <= 0:
        return None
    return run_vae(cfg, device).decode_coarse


def run_vae(cfg: RunConfig, device):
    """A frozen copy of the run's VAE: the cache's, else data.vae."""
    from vae3d.io import load_vae

    index = cache_index(cfg)
    return load_vae(index["vae"] if index else cfg.data.vae, device=device).eval().requires_grad_(False)


@torch.no_grad()
def row_to_latents(row: list[dict], encoders, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A loader row -> (latents [(c, T, h, w)], text embeddings [(L, D)]) on `device`."""
    if encoders is None:
        return [s["latent"].to(device) for s in row], [s["text"].to(device) for s in row]
    vae, text_encoder = encoders
    latents = [vae.encode(s["video"][None].to(device))[0] for s in row]  # each (c, T, h, w)
    texts, _ = text_encoder.encode([s["caption"] for s in row])
    return latents, [t.float() for t in texts]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up, constant, then (if
    decay_start >= 0) a cosine from 1 at decay_start to min_lr_ratio at max_steps."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if 0 <= cfg.decay_start <= step:
        progress = min(1.0, (step - cfg.decay_start) / max(1, cfg.max_steps - cfg.decay_start))
        factor *= cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """AdamW + the `lr_factor` schedule."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


class _EngineModel:
    """What flow_loss needs (`.config`, `.forward_packed`), calling the DeepSpeed engine so its hooks
    (ZeRO-3 parameter gathering) run."""

    def __init__(self, engine):
        self.engine, self.config = engine, engine.module.config

    def forward_packed(self, packed, timesteps):
        return self.engine(packed, timesteps)


def step_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """Noise/timestep RNG of one micro-step: a function of its position only, so resume is exact."""
    return torch.Generator().manual_seed(hash((seed, rank, step, micro)) & 0x7FFF_FFFF_FFFF)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


PATCH_TIED = ("x_embedder.", "final_layer.linear.")  # shapes follow the patch size


def init_weights(model: VideoDiT, folder: str) -> None:
    """Copy a `save_dit` folder's weights into `model` (same shapes); zero the head if `prediction` differs.
    A source with another patch size gives the transformer body (blocks, timestep and text embedders, adaLN
    of the head); the patch embedding and output projection, whose shapes follow the patch, keep their fresh
    init (output zero)."""
    from videodit.checkpoint import load_dit

    source, _ = load_dit(folder)
    src_state, dst_state = source.state_dict(), model.state_dict()
    new: list[str] = []  # keys that keep their fresh init
    repatch = tuple(source.config.patch) != tuple(model.config.patch)
    if repatch:
        if source.config.in_channels != model.config.in_channels:
            raise ValueError(f"train.init_from {folder!r}: in_channels {source.config.in_channels} != "
                             f"{model.config.in_channels}; only the patch size may change")
        new += [k for k in dst_state if k.startswith(PATCH_TIED) and k not in new]
    bad = [k for k in dst_state
           if k not in new and (k not in src_state or src_state[k].shape != dst_state[k].shape)]
    bad += [k for k in src_state if k not in dst_state]
    if bad:
        raise ValueError(f"train.init_from {folder!r} does not fit model: mismatched, missing or extra "
                         f"{bad[:5]}{' ...' if len(bad) > 5 else ''}")
    model.load_state_dict({k: v.float() for k, v in src_state.items() if k not in new}, strict=False)
    if source.config.prediction != model.config.prediction:
        torch.nn.init.zeros_(model.final_layer.linear.weight)
        torch.nn.init.zeros_(model.final_layer.linear.bias)
    log.info("initialised from %s (prediction %s -> %s, patch %s -> %s%s)", folder, source.config.prediction,
             model.config.prediction, tuple(source.config.patch), tuple(model.config.patch),
             "; patch embedding and output projection fresh" if repatch else "")


def dit_meta(cfg: RunConfig) -> dict:
    vae, te = cfg.data.vae, cfg.data.text_encoder
    meta = {"flow": to_dict(cfg.flow), "random_init": False}
    index = cache_index(cfg)
    if index:
        vae, te = index["vae"], index["text_encoder"]
        shapes = [s["latent_shape"] for s in index["samples"]]
        if shapes:  # the largest latent (T, h, w) trained on, per axis: generate.py notes requests beyond it
            meta["trained_latent_max"] = [max(s[k] for s in shapes) for k in (1, 2, 3)]
    return {"vae": vae, "text_encoder": te, **meta}


def save_checkpoint(engine, ema: EMA, loader: PackedLoader, cfg: RunConfig, step: int, rank: int) -> Path:
    """DeepSpeed state + per-rank extras + EMA, then (rank 0) atomically point `latest` at it."""
    root = Path(cfg.train.output_dir) / "checkpoints"
    tag = f"step{step:08d}"
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save({"loader": loader.state_dict(), "rng": rng_state()}, root / tag / f"extra_rank{rank:05d}.pt")
    if rank == 0:  # the EMA shadow is whole (and identical) on every rank
        torch.save(ema.state_dict(), root / tag / "ema_state.pt")
        export = VideoDiT(cfg.model)
        ema.copy_to(export)
        save_dit(export, root / tag / "ema", dit_meta(cfg))
    barrier()
    if rank == 0:
        tmp = root / f".latest.tmp-{os.getpid()}"
        tmp.write_text(tag)
        os.replace(tmp, root / "latest")  # the commit point
        save_dit(export, Path(cfg.train.output_dir) / "ema", dit_meta(cfg))
        tags = sorted(p.name for p in root.glob("step*") if p.is_dir())
        for old in tags[: -cfg.train.keep_checkpoints]:
            if old != tag:
                shutil.rmtree(root / old, ignore_errors=True)
        log.info("saved checkpoint %s", root / tag)
    barrier()
    return root / tag


def maybe_resume(engine, ema: EMA, loader: PackedLoader, cfg: RunConfig, rank: int) -> int:
    """Restore everything from checkpoints/latest if present -> the step to continue from."""
    root = Path(cfg.train.output_dir) / "checkpoints"
    if not (cfg.train.resume and (root / "latest").is_file()):
        return 0
    tag = (root / "latest").read_text().strip()
    _, client = engine.load_checkpoint(str(root), tag=tag)
    extra = torch.load(root / tag / f"extra_rank{rank:05d}.pt", weights_only=False)
    loader.load_state_dict(extra["loader"])
    set_rng_state(extra["rng"])
    ema.load_state_dict(torch.load(root / tag / "ema_state.pt", weights_only=True))
    step = int(client["step"])
    log.info("resumed from %s at step %d (model, optimizer, EMA, data position, RNG restored)",
             root / tag, step)
    return step


def write_samples(ema: EMA, cfg: RunConfig, encoders, step: int, device) -> None:
    """Sample videos from the EMA weights (raw-data mode only: needs the VAE and text encoder)."""
    if encoders is None:
        log.info("sample videos need data.manifest mode (VAE + text encoder); skipped")
        return
    from videodit.mp4 import Mp4Writer
    from videodit.sampling import Request, sample

    vae, text_encoder = encoders
    model = VideoDiT(cfg.model).to(device).eval()
    ema.copy_to(model)
    F, H, W = cfg.train.sample_size
    size = (vae.num_latent_frames(F), H // vae.spatial_stride, W // vae.spatial_stride)
    texts, _ = text_encoder.encode(list(cfg.train.sample_prompts))
    reqs = [Request(size=size, text=t.float(), seed=i) for i, t in enumerate(texts)]
    latents = sample(model, reqs, steps=20, flow_cfg=cfg.flow, device=device, progress=False)
    folder = Path(cfg.train.output_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(latents):
        video = vae.decode(z[None], num_frames=F)[0]  # (3, F, H, W)
        frames = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu()  # (F, H, W, 3)
        with Mp4Writer(folder / f"step{step:08d}_{i}.mp4", fps=8, height=H, width=W) as w:
            w.write(frames)


# ------------------------------------------------------------------ main


def main(argv=None) -> None:
    import deepspeed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    args = parse_args(argv)
    cfg = load_config(RunConfig, args.config, args.set)
    rank, local_rank, world = init_distributed(cfg.deepspeed.cpu_shm_comm)
    out = Path(cfg.train.output_dir)
    setup_logging(out, rank)
    device = device_for(local_rank)
    random.seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)
    torch.manual_seed(cfg.train.seed)  # identical init on every rank

    loader, encoders = build_data(cfg, rank, world, device)
    pixel_decoder = build_pixel_decoder(cfg, device)
    model = VideoDiT(cfg.model)
    if cfg.train.init_from:
        init_weights(model, cfg.train.init_from)
    ema = EMA(model, cfg.train.ema_decay)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer, scheduler = build_optimizer(model, cfg.train)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg.deepspeed, world))
    step = maybe_resume(engine, ema, loader, cfg, rank)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        log.info("world size %d, ZeRO stage %d, %s, %.2fM parameters", world, cfg.deepspeed.zero_stage,
                 cfg.deepspeed.precision, num_params / 1e6)
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    last = cfg.train.stop_step if cfg.train.stop_step >= 0 else cfg.train.max_steps
    bar = tqdm(total=last, initial=step, disable=rank != 0, desc="train")
    rows, nan_skips, t0 = iter(loader), 0, time.time()
    while step < last:
        losses, tokens, attempt = [], 0, 0
        while len(losses) < cfg.deepspeed.grad_accum:  # one optimizer step = grad_accum rows per rank
            row = next(rows)
            latents, texts = row_to_latents(row, encoders, device)
            gen = step_generator(cfg.train.seed, rank, step, attempt)
            attempt += 1
            loss, _ = flow_loss(_EngineModel(engine), latents, texts, cfg.flow, gen, cfg.train.token_drop,
                                pixel_decoder)
            if any_rank(not bool(torch.isfinite(loss)), device):  # all ranks skip together
                nan_skips += 1
                log.warning("non-finite loss at step %d (rank-local %s): row skipped, no update",
                            step, loss.item())
                continue
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            tokens += sum(s.numel() // s.shape[0] for s in latents)
        step += 1
        with gathered(engine.module, cfg.deepspeed.zero_stage):
            ema.update(engine.module)
        loss_avg = mean_over_ranks(sum(losses) / len(losses), device)
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == last:
            skipped = sum_over_ranks(loader.source.stats.get("skipped", 0), device)
            rec = {"step": step, "loss": loss_avg, "lr": scheduler_lr(engine), "skipped_data": skipped,
                   "nan_skips": nan_skips, "latent_positions_per_s": tokens / max(1e-9, time.time() - t0)}
            t0 = time.time()
            if rank == 0:
                bar.set_postfix(loss=f"{loss_avg:.4f}")
                log.info("step %d loss %.6f lr %.2e bad-data skipped %d nan-skipped %d", step, loss_avg,
                         rec["lr"], skipped, nan_skips)
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                for k, v in rec.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, step)
        if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == last:
            save_checkpoint(engine, ema, loader, cfg, step, rank)
        if cfg.train.sample_every and step % cfg.train.sample_every == 0 and rank == 0:
            write_samples(ema, cfg, encoders, step, device)
    bar.close()
    stats = all_gather_object(dict(loader.source.stats))
    if rank == 0:
        writer.close()
        metrics.close()
        log.info("done at step %d; bad data skipped %d, non-finite losses skipped %d; EMA weights in %s",
                 step, sum(s.get("skipped", 0) for s in stats), nan_skips, out / "ema")


def scheduler_lr(engine) -> float:
    groups = getattr(engine.optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else math.nan


if __name__ == "__main__":
    main()
