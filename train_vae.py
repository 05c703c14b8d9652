"""Train the causal 3D VAE on videos and images together.

    python train_vae.py --config configs/vae_debug.yaml [--set train.max_steps=100 --set train.lr=3e-4]
    deepspeed --num_gpus 8 train_vae.py --config configs/default/vae_1_base.yaml --set data.manifest=M

The VAE runs in a DeepSpeed engine (ZeRO per `deepspeed.zero_stage`; plain `python` is a group of one);
the optional patch-GAN discriminator averages its gradients over ranks by hand. Loss: L1 + KL +
(1 - SSIM) [+ MSE] [+ hinge patch-GAN after `loss.gan_start`]. The loop, checkpoints (each with the VAE as
a `save_vae` folder, `vae/`) and resume are `videodit.trainer`'s. At the end the per-channel latent
shift/scale are measured on `stats_clips` clips, stored in the model, and the VAE is written to
`<output_dir>/final/`.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from vae3d import CausalVAE3D, VAEConfig
from vae3d.io import load_vae, save_vae
from vae3d.losses import PatchDiscriminator3D, VAELossConfig, disc_hinge_loss, psnr, vae_loss
from videodit.config import load_config, to_dict
from videodit.distributed import DeepSpeedConfig, barrier
from videodit.trainer import Session, TrainConfig, load_matching, parse_args, start, train

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


def _vae_train_defaults() -> TrainConfig:
    return TrainConfig(output_dir="runs/vae", betas=(0.9, 0.99), warmup_steps=0, ema_decay=0.0,
                       save_every=200)


@dataclass
class VAETrainConfig:
    model: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    train: TrainConfig = field(default_factory=_vae_train_defaults)
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig(zero_stage=1))
    stats_clips: int = 32  # clips encoded at the end to measure the latent shift/scale
    freeze_encoder: bool = False  # train the decoder only: the latent space (and its shift/scale) stays
    # Fine-tune encoder and decoder while the latents of data.anchor_manifest's clips stay where init_from's
    # encoder puts them: anchor_weight times their mean squared distance in normalised latent units joins
    # the loss (the latent shift/scale are kept). A DiT trained on those clips' latents keeps working,
    # while the rest of the data may move to latents that reconstruct it better.
    anchor_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.stats_clips < 0:
            raise ValueError(f"stats_clips must be >= 0, got {self.stats_clips}")
        init = self.train.init_from
        if self.freeze_encoder and not init:
            raise ValueError("freeze_encoder needs train.init_from: a trained VAE (its encoder is kept)")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.anchor_weight > 0 and not (init and self.data.anchor_manifest):
            raise ValueError("anchor_weight holds data.anchor_manifest's latents where train.init_from's "
                             "encoder puts them: it needs both")
        if self.anchor_weight > 0 and (self.freeze_encoder or self.stats_clips):
            raise ValueError("anchor_weight fine-tunes the encoder under the kept latent stats: it needs "
                             "freeze_encoder false and stats_clips 0")


# ------------------------------------------------------------------ data


class ClipStream:
    """Endless (3, F, H, W) clips in [-1, 1] from the data layer (data.dataset.VideoDataset): this rank's
    share of each epoch's seeded order, epoch after epoch.

    Its position (epoch, clips of that epoch's order taken) is `state_dict()`; after `load_state_dict` the
    stream continues with exactly the clip an unstopped one would give next (a clip's frames and size are
    a function of (seed, epoch, index), so nothing else needs saving)."""

    def __init__(self, dataset, manifest: str, rank: int):
        self.dataset, self.manifest, self.rank = dataset, manifest, rank
        self.epoch, self.offset = 0, 0
        self.last_path = ""  # the clip given last

    def __iter__(self) -> ClipStream:
        return self

    def __next__(self) -> torch.Tensor:
        while True:
            self.dataset.set_epoch(self.epoch)
            order = self.dataset.indices()
            whole_epoch = self.offset == 0
            while self.offset < len(order):
                index = order[self.offset]
                self.offset += 1
                sample = self.dataset.load(index)
                if sample is not None:
                    self.last_path = sample["path"]
                    return sample["video"]
            if whole_epoch:
                raise ValueError(f"no readable clips in {self.manifest!r} for rank {self.rank}")
            self.epoch, self.offset = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def clip_stream(cfg: VAETrainConfig, rank: int, world: int, manifest: str = "") -> ClipStream:
    """This rank's `ClipStream` over `manifest` (default: data.manifest, else the rendered world)."""
    from data.dataset import VideoDataset
    from data.sampling import SamplingConfig

    manifest = manifest or cfg.data.manifest or str(Path(cfg.train.output_dir) / "world" / "train.jsonl")
    sampling = SamplingConfig(temporal_stride=cfg.model.temporal_stride,
                              spatial_stride=cfg.model.spatial_stride,
                              min_tokens=min(64, cfg.data.max_tokens), max_tokens=cfg.data.max_tokens,
                              min_frames=cfg.data.min_frames, max_frames=cfg.data.max_frames)
    dataset = VideoDataset(manifest, sampling, seed=cfg.train.seed, rank=rank, world_size=world)
    return ClipStream(dataset, manifest, rank)


def render_world_if_needed(cfg: VAETrainConfig, rank: int) -> None:
    """No data.manifest: rank 0 renders a small synthetic world into <output_dir>/world (once)."""
    if cfg.data.manifest or rank != 0 or (Path(cfg.train.output_dir) / "world" / "train.jsonl").is_file():
        return
    from data.synthetic import render_dataset

    d = cfg.data
    max_frames = max(d.max_frames, 9)
    render_dataset(Path(cfg.train.output_dir) / "world", d.synthetic_clips, seed=cfg.train.seed,
                   num_heldout=1, min_size=d.synthetic_min_size, max_size=d.synthetic_max_size,
                   min_frames=min(9, max_frames), max_frames=max_frames)


def as_sample(video: torch.Tensor, generator: torch.Generator, image_fraction: float, device) -> torch.Tensor:
    """(3, F, H, W) -> (1, 3, F', H, W); an image (F' = 1) with probability image_fraction."""
    if float(torch.rand((), generator=generator)) < image_fraction:
        video = video[:, :1]
    return video[None].to(device)


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


# ------------------------------------------------------------------ the task


def init_weights(model: CausalVAE3D, folder: str) -> None:
    """Copy a saved VAE into `model`: the same architecture, or the same plus a pixel refiner (which then
    starts as the identity)."""
    init = load_vae(folder)
    mine = to_dict(model.config)
    if init.config.refine_channels == 0:  # a fine-tune may add a refiner
        mine.update(refine_channels=0)
    if to_dict(init.config) != mine:
        raise ValueError(f"train.init_from {folder}: its architecture {to_dict(init.config)} differs from "
                         f"the config's model section {to_dict(model.config)} (a fine-tune may only add a "
                         f"pixel refiner)")
    fresh = {k for k in model.state_dict() if k.startswith("decoder.refine.")} - set(init.state_dict())
    load_matching(model, init.state_dict(), fresh, folder)
    log.info("initialised from %s", folder)


class VAETask:
    """Reconstruction loss on clips, optional anchor and patch-GAN (`videodit.trainer.Task`)."""

    def __init__(self, cfg: VAETrainConfig, session: Session):
        self.cfg, self.session = cfg, session
        device = session.device
        self.clips = clip_stream(cfg, session.rank, session.world)
        self.anchor_clips = self.anchor_vae = None
        if cfg.anchor_weight > 0:
            self.anchor_clips = clip_stream(cfg, session.rank, session.world, cfg.data.anchor_manifest)
            self.anchor_vae = load_vae(cfg.train.init_from).to(device).eval().requires_grad_(False)
        self.disc = self.disc_opt = None
        if cfg.loss.gan_start >= 0:
            self.disc = PatchDiscriminator3D(cfg.loss.disc_channels, cfg.loss.disc_layers).to(device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.9))
        self.disc_trained = False  # the discriminator has gradients to apply this step

    def init_from(self, model, folder: str) -> None:
        init_weights(model, folder)

    def loss(self, model, step: int, generator: torch.Generator):
        cfg, device = self.cfg, self.session.device
        gan_on = self.disc is not None and step >= cfg.loss.gan_start
        video = as_sample(next(self.clips), generator, cfg.data.image_fraction, device)
        recon, mean, logvar = model(video, generator=generator)
        loss, logs = vae_loss(recon, video, mean, logvar, cfg.loss, self.disc if gan_on else None)
        logs.pop("loss")
        logs["psnr"] = psnr(recon.detach().clamp(-1, 1), video).item()
        if self.anchor_clips is not None:
            held = as_sample(next(self.anchor_clips), generator, cfg.data.image_fraction, device)
            recon_a, mean_a, logvar_a = model(held, generator=generator)
            loss_a, _ = vae_loss(recon_a, held, mean_a, logvar_a, cfg.loss, None)
            with torch.no_grad():
                old_mean, _ = self.anchor_vae.encode_moments(held, tile=0)
            scale = self.anchor_vae.latent_scale.view(1, -1, 1, 1, 1)
            drift = ((mean_a - old_mean) / scale).pow(2).mean()
            loss = loss + loss_a + cfg.anchor_weight * drift
            logs["anchor_drift"] = drift.item()
            logs["anchor_psnr"] = psnr(recon_a.detach().clamp(-1, 1), held).item()
        if gan_on and torch.isfinite(loss):
            d_loss = disc_hinge_loss(self.disc(video), self.disc(recon.detach()))
            (d_loss / cfg.deepspeed.grad_accum).backward()
            logs["gan_d"] = d_loss.item()
            self.disc_trained = True
        return loss, logs

    def after_step(self, step: int, weights) -> None:
        if not self.disc_trained:
            return
        if dist.is_initialized():
            for p in self.disc.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        self.disc_opt.step()
        self.disc_opt.zero_grad(set_to_none=True)
        self.disc_trained = False

    def log_fields(self, seconds: float) -> dict:
        return {}

    def samples(self) -> list[str]:
        return [s.last_path for s in (self.clips, self.anchor_clips) if s is not None]

    def state_dict(self) -> dict:
        state = {"clips": self.clips.state_dict()}
        if self.anchor_clips is not None:
            state["anchor_clips"] = self.anchor_clips.state_dict()
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_opt.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.clips.load_state_dict(state["clips"])
        if self.anchor_clips is not None:
            self.anchor_clips.load_state_dict(state["anchor_clips"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])

    def export(self, weights: dict, folder: Path) -> None:
        model = CausalVAE3D(self.cfg.model)
        model.load_state_dict(weights)
        save_vae(model, folder)


# ------------------------------------------------------------------ main


def main(argv=None) -> list[dict]:
    """Train; returns the logged records (also written to <output_dir>/metrics.jsonl on rank 0)."""
    args = parse_args(__doc__, argv)
    cfg = load_config(VAETrainConfig, args.config, args.set)
    session = start(cfg.train, cfg.deepspeed)
    render_world_if_needed(cfg, session.rank)
    barrier()
    model = CausalVAE3D(cfg.model)
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    result = train(VAETask(cfg, session), model, cfg.train, cfg.deepspeed, session, to_dict(cfg),
                   export_name="vae")
    final = CausalVAE3D(cfg.model).to(session.device).eval()
    final.load_state_dict(result.weights)
    if cfg.stats_clips and not cfg.freeze_encoder:  # a frozen encoder keeps the stats it came with
        stream = clip_stream(cfg, session.rank, session.world)
        shift, scale = latent_stats(final, stream, cfg.stats_clips, session.device)
        final.set_latent_stats(shift, scale)
        log.info("latent shift %s scale %s", [round(v, 3) for v in shift.tolist()],
                 [round(v, 3) for v in scale.tolist()])
    if session.rank == 0:
        save_vae(final, session.out / "final", meta={"step": result.step})
    barrier()
    return result.records


if __name__ == "__main__":
    main(sys.argv[1:])
