"""Train the causal 3D VAE on videos and images together.

    python train_vae.py --config configs/vae_debug.yaml [--set steps=100 --set lr=3e-4]
    deepspeed --num_gpus 8 train_vae.py --config configs/vae_default.yaml

Plain `python` trains in one process with torch AdamW; under the `deepspeed` launcher (RANK set in the
environment) the VAE runs in a DeepSpeed engine (ZeRO per `deepspeed.zero_stage`) and the optional
patch-GAN discriminator averages its gradients over ranks by hand. Loss: L1 + KL + (1 - SSIM) [+ hinge
patch-GAN after `loss.gan_start`]. Logs PSNR to OUT/metrics.jsonl; checkpoints OUT/last/ (save_vae folder
+ train_state.pt, or a DeepSpeed checkpoint in OUT/ds/) and resumes from them; at the end measures the
per-channel latent shift/scale on `stats_clips` clips, stores them in the model and writes OUT/final/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from vae3d import CausalVAE3D, VAEConfig
from vae3d.io import load_vae, save_vae
from vae3d.losses import PatchDiscriminator3D, VAELossConfig, disc_hinge_loss, psnr, vae_loss
from videodit.config import load_config, to_dict
from videodit.distributed import DeepSpeedConfig, deepspeed_config, init_distributed

log = logging.getLogger("train_vae")


@dataclass
class VAEDataConfig:
    manifest: str = ""  # CSV/JSONL/folder manifest; "" renders a small synthetic world into OUT/world
    synthetic_clips: int = 64  # clips rendered when manifest is ""
    synthetic_min_size: int = 48
    synthetic_max_size: int = 96
    min_frames: int = 1
    max_frames: int = 17  # clip length cap (frames); the VAE pads to 1 + k * ts itself
    max_tokens: int = 256  # NaViT resolution sampling budget (in 2x2 latent patches) per clip
    image_fraction: float = 0.25  # share of samples trained as single images (first frame only)
    # Clips whose latents are held where init_from's encoder puts them (`anchor_weight`): a second sample
    # from here joins every step, reconstructed as usual and with its latent pulled to the old one.
    anchor_manifest: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.image_fraction <= 1.0:
            raise ValueError(f"data.image_fraction must be in [0, 1], got {self.image_fraction}")
        if self.synthetic_clips < 1:
            raise ValueError(f"data.synthetic_clips must be >= 1, got {self.synthetic_clips}")


@dataclass
class VAETrainConfig:
    model: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig(zero_stage=1))
    out_dir: str = "runs/vae"
    steps: int = 1000  # optimizer steps; each accumulates deepspeed.grad_accum clips per rank
    lr: float = 1e-4
    weight_decay: float = 0.0
    log_every: int = 10
    save_every: int = 200
    stats_clips: int = 32  # clips encoded at the end to measure the latent shift/scale
    seed: int = 0
    init_from: str = ""  # start from this saved VAE (folder or "default") instead of a fresh one
    freeze_encoder: bool = False  # train the decoder only: the latent space (and its shift/scale) stays
    # Fine-tune encoder and decoder while the latents of data.anchor_manifest's clips stay where init_from's
    # encoder puts them: anchor_weight times their mean squared distance in normalised latent units joins
    # the loss (the latent shift/scale are kept). A DiT trained on those clips' latents keeps working,
    # while the rest of the data (natural images) may move to latents that reconstruct it better.
    anchor_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"steps must be >= 1 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if self.log_every < 1 or self.save_every < 0 or self.stats_clips < 0:
            raise ValueError(f"log_every >= 1, save_every >= 0, stats_clips >= 0 required, got "
                             f"{self.log_every}, {self.save_every}, {self.stats_clips}")
        if self.freeze_encoder and not self.init_from:
            raise ValueError("freeze_encoder needs init_from: a trained VAE (its encoder is kept)")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.anchor_weight > 0 and not (self.init_from and self.data.anchor_manifest):
            raise ValueError("anchor_weight holds data.anchor_manifest's latents where init_from's encoder "
                             "puts them: it needs both")
        if self.anchor_weight > 0 and (self.freeze_encoder or self.stats_clips):
            raise ValueError("anchor_weight fine-tunes the encoder under the kept latent stats: it needs "
                             "freeze_encoder false and stats_clips 0")


# ------------------------------------------------------------------ data


def clip_stream(cfg: VAETrainConfig, rank: int, world: int, manifest: str = "") -> Iterator[torch.Tensor]:
    """Endless (3, F, H, W) clips in [-1, 1] from the data layer (data.dataset.VideoDataset), from `manifest`
    (default: data.manifest)."""
    from data.dataset import VideoDataset
    from data.sampling import SamplingConfig

    manifest = manifest or cfg.data.manifest or str(Path(cfg.out_dir) / "world" / "train.jsonl")
    sampling = SamplingConfig(temporal_stride=cfg.model.temporal_stride,
                              spatial_stride=cfg.model.spatial_stride,
                              min_tokens=min(64, cfg.data.max_tokens), max_tokens=cfg.data.max_tokens,
                              min_frames=cfg.data.min_frames, max_frames=cfg.data.max_frames)
    dataset = VideoDataset(manifest, sampling, seed=cfg.seed, rank=rank, world_size=world)
    for epoch in itertools.count():
        dataset.set_epoch(epoch)
        got = False
        for sample in dataset:
            got = True
            yield sample["video"]
        if not got:
            raise ValueError(f"no readable clips in {manifest!r} for rank {rank}")


def render_world_if_needed(cfg: VAETrainConfig, rank: int) -> None:
    if cfg.data.manifest or rank != 0 or (Path(cfg.out_dir) / "world" / "train.jsonl").is_file():
        return
    from data.synthetic import render_dataset

    d = cfg.data
    max_frames = max(d.max_frames, 9)
    render_dataset(Path(cfg.out_dir) / "world", d.synthetic_clips, seed=cfg.seed, num_heldout=1,
                   min_size=d.synthetic_min_size, max_size=d.synthetic_max_size,
                   min_frames=min(9, max_frames), max_frames=max_frames)


def as_sample(video: torch.Tensor, rng: random.Random, image_fraction: float, device) -> torch.Tensor:
    """(3, F, H, W) -> (1, 3, F', H, W); an image (F' = 1) with probability image_fraction."""
    if rng.random() < image_fraction:
        video = video[:, :1]
    return video[None].to(device)


# ------------------------------------------------------------------ checkpoints


def save_state(out: Path, model, opt, disc, disc_opt, step: int, engine=None) -> None:
    """OUT/last = save_vae folder + train_state.pt (optimizer, discriminator, step); DeepSpeed: OUT/ds too."""
    if engine is not None:
        engine.save_checkpoint(str(out / "ds"), tag="last", client_state={"step": step})
    if engine is None or dist.get_rank() == 0:
        save_vae(model, out / "last", meta={"step": step})
        state = {"step": step, "optimizer": opt.state_dict() if engine is None else None,
                 "disc": disc.state_dict() if disc is not None else None,
                 "disc_optimizer": disc_opt.state_dict() if disc_opt is not None else None}
        tmp = out / "last" / "train_state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, out / "last" / "train_state.pt")


def maybe_resume(out: Path, model, opt, disc, disc_opt, engine=None) -> int:
    path = out / "last" / "train_state.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if engine is not None:
        engine.load_checkpoint(str(out / "ds"), tag="last")
    else:
        model.load_state_dict(load_vae(out / "last").state_dict())
        opt.load_state_dict(state["optimizer"])
    if disc is not None and state["disc"] is not None:
        disc.load_state_dict(state["disc"])
        disc_opt.load_state_dict(state["disc_optimizer"])
    log.info("resumed from %s at step %d", out / "last", state["step"])
    return int(state["step"])


# ------------------------------------------------------------------ latent statistics


@torch.no_grad()
def latent_stats(model: CausalVAE3D, clips: Iterator[torch.Tensor], num: int, device) -> tuple:
    """Per-channel mean and std of the posterior mean over `num` clips (summed over ranks) -> (c,), (c,)."""
    c = model.latent_channels
    acc = torch.zeros(3, c, dtype=torch.float64, device=device)  # count, sum, sum of squares
    for video in itertools.islice(clips, num):
        mean, _ = model.encode_moments(video[None].to(device))  # (1, c, T, h, w)
        flat = mean.double().transpose(0, 1).reshape(c, -1)  # (c, N)
        acc[0] += flat.shape[1]
        acc[1] += flat.sum(1)
        acc[2] += flat.pow(2).sum(1)
    if dist.is_initialized():
        dist.all_reduce(acc)
    count = acc[0].clamp_min(1)
    shift = acc[1] / count
    scale = (acc[2] / count - shift**2).clamp_min(1e-8).sqrt()
    return shift.float(), scale.float()


# ------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML file with what differs from VAETrainConfig defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="typed override")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    """Train; returns the logged records (also written to OUT/metrics.jsonl on rank 0)."""
    args = parse_args(argv)
    cfg = load_config(VAETrainConfig, args.config, args.set)
    use_ds = "RANK" in os.environ  # launched by deepspeed / torchrun
    rank, world = 0, 1
    if use_ds:
        rank, _, world = init_distributed()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    render_world_if_needed(cfg, rank)
    if use_ds:
        dist.barrier()
    torch.manual_seed(cfg.seed)  # identical init on every rank
    model = CausalVAE3D(cfg.model)
    if cfg.init_from:
        init = load_vae(cfg.init_from)
        mine = to_dict(cfg.model)  # what init must match; a fine-tune may add a pixel refiner
        if init.config.refine_channels == 0:
            mine.update(refine_channels=0)
        if to_dict(init.config) != mine:
            raise ValueError(f"init_from {cfg.init_from}: its architecture {to_dict(init.config)} "
                             f"differs from the config's model section {to_dict(cfg.model)} (a fine-tune may "
                             f"only add a pixel refiner)")
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
        addable = ("decoder.refine.",)
        if unexpected or any(not k.startswith(addable) for k in missing):
            raise ValueError(f"init_from {cfg.init_from}: weights do not fit (missing {missing}, "
                             f"unexpected {unexpected})")
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    disc = disc_opt = None
    if cfg.loss.gan_start >= 0:
        disc = PatchDiscriminator3D(cfg.loss.disc_channels, cfg.loss.disc_layers).to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.9))
    engine = None
    if use_ds:
        import deepspeed

        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                                 config=deepspeed_config(cfg.deepspeed, world))
    step = maybe_resume(out, model, opt, disc, disc_opt, engine)
    for group in opt.param_groups:  # the config's lr wins over the one saved with a resumed optimizer
        group["lr"] = cfg.lr
    if rank == 0:
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        log.info("VAE %.2fM parameters, world size %d, %s", sum(p.numel() for p in model.parameters()) / 1e6,
                 world, "deepspeed" if use_ds else "plain torch")
    clips = clip_stream(cfg, rank, world)
    anchor_clips = anchor_vae = None
    if cfg.anchor_weight > 0:
        anchor_clips = clip_stream(cfg, rank, world, cfg.data.anchor_manifest)
        anchor_vae = load_vae(cfg.init_from).to(device).eval().requires_grad_(False)
    rng = random.Random(f"vae-{cfg.seed}-{rank}-{step}")
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank + step)
    records, accum, t0 = [], cfg.deepspeed.grad_accum, time.time()
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    while step < cfg.steps:
        gan_on = disc is not None and step >= cfg.loss.gan_start
        logs_sum: dict[str, float] = {}
        for _ in range(accum):
            video = as_sample(next(clips), rng, cfg.data.image_fraction, device)
            recon, mean, logvar = (engine or model)(video, generator=gen)
            loss, logs = vae_loss(recon, video, mean, logvar, cfg.loss, disc if gan_on else None)
            logs["psnr"] = psnr(recon.detach().clamp(-1, 1), video).item()
            if anchor_clips is not None:
                held = as_sample(next(anchor_clips), rng, cfg.data.image_fraction, device)
                recon_a, mean_a, logvar_a = (engine or model)(held, generator=gen)
                loss_a, _ = vae_loss(recon_a, held, mean_a, logvar_a, cfg.loss, None)
                with torch.no_grad():
                    old_mean, _ = anchor_vae.encode_moments(held, tile=0)
                scale = anchor_vae.latent_scale.view(1, -1, 1, 1, 1)
                drift = ((mean_a - old_mean) / scale).pow(2).mean()
                loss = loss + loss_a + cfg.anchor_weight * drift
                logs.update(anchor_drift=drift.item(),
                            anchor_psnr=psnr(recon_a.detach().clamp(-1, 1), held).item())
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / accum).backward()
            if gan_on:
                d_loss = disc_hinge_loss(disc(video), disc(recon.detach()))
                (d_loss / accum).backward()
                logs["gan_d"] = d_loss.item()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v / accum
        if engine is None:
            if cfg.deepspeed.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.deepspeed.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if gan_on:
            if dist.is_initialized():
                for p in disc.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            disc_opt.step()
            disc_opt.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, **{k: round(v, 6) for k, v in logs_sum.items()},
                   "sec_per_step": round((time.time() - t0) / cfg.log_every, 4)}
            t0 = time.time()
            records.append(rec)
            if rank == 0:
                log.info("step %d loss %.4f l1 %.4f psnr %.2f", step, rec["loss"], rec["l1"], rec["psnr"])
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            save_state(out, model, opt, disc, disc_opt, step, engine)
    model.eval()
    if cfg.stats_clips and not cfg.freeze_encoder:  # a frozen encoder keeps the stats it came with
        shift, scale = latent_stats(model, clip_stream(cfg, rank, world), cfg.stats_clips, device)
        model.set_latent_stats(shift, scale)
        if rank == 0:
            log.info("latent shift %s scale %s", [round(v, 3) for v in shift.tolist()],
                     [round(v, 3) for v in scale.tolist()])
    save_state(out, model, opt, disc, disc_opt, step, engine)
    if rank == 0:
        save_vae(model, out / "final", meta={"step": step})
        metrics.close()
    return records


if __name__ == "__main__":
    main()
