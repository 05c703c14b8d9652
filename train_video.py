"""Train the video DiT with rectified flow on NaViT-packed rows, under DeepSpeed ZeRO.

    deepspeed --num_accelerators 2 train_video.py --config configs/debug.yaml --set train.max_steps=20
    python train_video.py --config configs/debug.yaml          (one rank)

Data: raw videos from `data.manifest` (decoded, VAE- and text-encoded on the fly) or a latent cache
from `python -m data.precache` (`data.cache`). The loop, checkpoints and resume are `videodit.trainer`'s;
each checkpoint holds the EMA weights as a `save_dit` folder (`ema/`) that `generate.py --ckpt` loads, and
`<output_dir>/ema` is the newest of them.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.loader import PackedLoader
from data.precache import LatentCache
from data.sampling import SamplingConfig
from data.tasks import check_mix, sample_tasks
from videodit.checkpoint import load_dit, save_dit
from videodit.config import load_config, to_dict
from videodit.distributed import DeepSpeedConfig, all_gather_object, sum_over_ranks
from videodit.flow import FlowConfig, flow_loss
from videodit.model import DiTConfig, VideoDiT
from videodit.trainer import Session, TrainConfig, load_matching, parse_args, start, train

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
    # NaViT token dropping for large samples: a sample with more tokens trains on a random keep_tokens of
    # them (0 = keep all); rows are planned with the kept counts, so 720p clips fit small rows
    keep_tokens: int = 0
    # Conditioning tasks mixed into every row ({task: weight}): t2v, i2v (latent frame 0 given), extend (a
    # prefix of whole token groups given); see data/tasks.py. The checkpoint's meta lists them.
    tasks: dict[str, float] = field(default_factory=lambda: {"t2v": 1.0})
    target_fps: float = 8.0
    min_frames: int = 1
    max_frames: int = 33
    window: int = 32  # samples planned into rows together
    token_drop: float = 0.0  # NaViT token dropping: this share of each clip's tokens is left out of a row

    def __post_init__(self):
        check_mix(self.tasks)
        if not 0 <= self.keep_tokens <= self.row_tokens:
            raise ValueError(f"data.keep_tokens ({self.keep_tokens}) must be in [0, data.row_tokens "
                             f"({self.row_tokens})]")
        if min(self.max_tokens, self.keep_tokens or self.max_tokens) > self.row_tokens:
            raise ValueError(f"data.max_tokens ({self.max_tokens}) must be <= data.row_tokens "
                             f"({self.row_tokens}) unless data.keep_tokens caps it: a clip must fit a row")
        if not 0.0 <= self.token_drop < 1.0:
            raise ValueError(f"data.token_drop must be in [0, 1), got {self.token_drop}")


@dataclass
class PreviewConfig:
    """Sample videos from the EMA weights during training (raw-data mode: it needs the VAE and the text
    encoder), written to <output_dir>/samples/."""

    every: int = 0  # steps between previews; 0 = off
    prompts: tuple[str, ...] = ("a red ball bouncing",)
    size: tuple[int, int, int] = (5, 32, 32)  # frames, height, width
    steps: int = 20  # sampling steps


@dataclass
class RunConfig:
    model: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)

    def __post_init__(self):
        if self.flow.pixel_weight > 0 and (self.data.token_drop > 0 or self.data.keep_tokens > 0):
            raise ValueError("flow.pixel_weight > 0 needs data.token_drop 0 (a dropped token has no x0 "
                             f"prediction to decode), got token_drop {self.data.token_drop}")


# ------------------------------------------------------------------ data


def build_data(cfg: RunConfig, session: Session):
    """-> (loader, encoders) where encoders = (vae, text_encoder) in raw mode, None with a cache."""
    if cfg.data.cache:
        source = LatentCache(cfg.data.cache, patch=cfg.model.patch, causal=cfg.model.causal_tubelet)
        encoders = None
    elif cfg.data.manifest:
        from data.dataset import VideoDataset
        from vae3d.io import load_vae
        from videodit.text_encoder import TextEncoder

        vae = load_vae(cfg.data.vae, device=session.device).eval().requires_grad_(False)
        text_encoder = TextEncoder(cfg.data.text_encoder, device=session.device)
        if vae.latent_channels != cfg.model.in_channels or text_encoder.dim != cfg.model.text_dim:
            raise ValueError(
                f"model.in_channels={cfg.model.in_channels} / model.text_dim={cfg.model.text_dim} do not "
                f"match the VAE's {vae.latent_channels} latent channels / the text encoder's dim "
                f"{text_encoder.dim}"
            )
        d = cfg.data
        sampling = SamplingConfig(temporal_stride=vae.temporal_stride, spatial_stride=vae.spatial_stride,
                                  patch=cfg.model.patch, causal=cfg.model.causal_tubelet,
                                  min_tokens=d.min_tokens, max_tokens=d.max_tokens,
                                  target_fps=d.target_fps, min_frames=d.min_frames, max_frames=d.max_frames)
        source = VideoDataset(d.manifest, sampling, seed=cfg.train.seed)  # manifest errors raise here
        encoders = (vae, text_encoder)
    else:
        raise ValueError("set data.manifest (raw videos) or data.cache (latent cache folder)")
    loader = PackedLoader(source, cfg.data.row_tokens, seed=cfg.train.seed, rank=session.rank,
                          world_size=session.world, window=cfg.data.window, keep_tokens=cfg.data.keep_tokens)
    return loader, encoders


def cache_index(cfg: RunConfig) -> dict | None:
    """The latent cache's index.json (its VAE, text encoder and samples), or None without a cache."""
    return json.loads((Path(cfg.data.cache) / "index.json").read_text()) if cfg.data.cache else None


def build_pixel_decoder(cfg: RunConfig, device):
    """`flow.pixel_weight` > 0: the frozen decoder of the run's VAE (the cache's, else data.vae), without its
    pixel refiner (`decode_coarse`), for flow_loss's pixel term; else None."""
    if cfg.flow.pixel_weight <= 0:
        return None
    from vae3d.io import load_vae

    index = cache_index(cfg)
    vae = load_vae(index["vae"] if index else cfg.data.vae, device=device).eval().requires_grad_(False)
    return vae.decode_coarse


def drop_rate(cfg: RunConfig):
    """NaViT token drop rate for the flow loss: data.token_drop, raised for samples above data.keep_tokens
    so they keep exactly that many tokens."""
    rate, keep = cfg.data.token_drop, cfg.data.keep_tokens
    if not keep:
        return rate
    return lambda n: max(rate, 1.0 - keep / n)


@torch.no_grad()
def row_to_latents(row: list[dict], encoders, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A loader row -> (latents [(c, T, h, w)], text embeddings [(L, D)]) on `device`."""
    if encoders is None:
        return [s["latent"].to(device) for s in row], [s["text"].to(device) for s in row]
    vae, text_encoder = encoders
    latents = [vae.encode(s["video"][None].to(device))[0] for s in row]  # each (c, T, h, w)
    texts, _ = text_encoder.encode([s["caption"] for s in row])
    return latents, [t.float() for t in texts]


# ------------------------------------------------------------------ model


PATCH_TIED = ("x_embedder.", "final_layer.linear.")  # shapes follow the patch size


def init_weights(model: VideoDiT, folder: str) -> None:
    """Copy a `save_dit` folder's weights into `model` (same shapes); zero the head if `prediction` differs.
    A source with another patch size gives the transformer body (blocks, timestep and text embedders, adaLN
    of the head); the patch embedding and output projection, whose shapes follow the patch, keep their fresh
    init (output zero)."""
    source, _ = load_dit(folder)
    repatch = tuple(source.config.patch) != tuple(model.config.patch)
    keep_fresh = set()
    if repatch:
        if source.config.in_channels != model.config.in_channels:
            raise ValueError(f"train.init_from {folder!r}: in_channels {source.config.in_channels} != "
                             f"{model.config.in_channels}; only the patch size may change")
        keep_fresh = {k for k in model.state_dict() if k.startswith(PATCH_TIED)}
    load_matching(model, source.state_dict(), keep_fresh, folder)
    if source.config.prediction != model.config.prediction:
        torch.nn.init.zeros_(model.final_layer.linear.weight)
        torch.nn.init.zeros_(model.final_layer.linear.bias)
    log.info("initialised from %s (prediction %s -> %s, patch %s -> %s%s)", folder, source.config.prediction,
             model.config.prediction, tuple(source.config.patch), tuple(model.config.patch),
             "; patch embedding and output projection fresh" if repatch else "")


def dit_meta(cfg: RunConfig) -> dict:
    """What a checkpoint records besides its weights: VAE, text encoder, flow settings, trained extent."""
    vae, te = cfg.data.vae, cfg.data.text_encoder
    meta = {"flow": to_dict(cfg.flow), "random_init": False,
            "tasks": sorted(k for k, w in cfg.data.tasks.items() if w > 0)}
    index = cache_index(cfg)
    if index:
        vae, te = index["vae"], index["text_encoder"]
        shapes = [s["latent_shape"] for s in index["samples"]]
        if shapes:  # the largest latent (T, h, w) trained on, per axis: generate.py notes requests beyond it
            meta["trained_latent_max"] = [max(s[k] for s in shapes) for k in (1, 2, 3)]
    return {"vae": vae, "text_encoder": te, **meta}


class _EngineModel:
    """What flow_loss needs (`.config`, `.forward_packed`), calling the DeepSpeed engine so its hooks
    (ZeRO-3 parameter gathering) run."""

    def __init__(self, engine):
        self.engine, self.config = engine, engine.module.config

    def forward_packed(self, packed, timesteps, token_timesteps=None):
        return self.engine(packed, timesteps, token_timesteps)


# ------------------------------------------------------------------ the task


class DiTTask:
    """Rectified-flow loss on the loader's packed rows (`videodit.trainer.Task`)."""

    def __init__(self, cfg: RunConfig, loader: PackedLoader, encoders, session: Session):
        self.cfg, self.loader, self.encoders, self.session = cfg, loader, encoders, session
        self.pixel_decoder = build_pixel_decoder(cfg, session.device)
        self.meta = dit_meta(cfg)
        self.rows = None  # iterator, made at the first step (after a resume restored the loader)
        self.positions = 0  # latent positions trained on since the last log record
        self.last_row: list[str] = []  # the paths of the row trained on last

    def init_from(self, model, folder: str) -> None:
        init_weights(model, folder)

    def loss(self, model, step: int, generator: torch.Generator):
        if self.rows is None:
            self.rows = iter(self.loader)
        row = next(self.rows)
        self.last_row = [str(s["path"]) for s in row]
        latents, texts = row_to_latents(row, self.encoders, self.session.device)
        self.positions += sum(z[0].numel() for z in latents)
        cond = None
        if {k for k, w in self.cfg.data.tasks.items() if w > 0} != {"t2v"}:
            rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
            _, cond = sample_tasks(self.cfg.data.tasks, [z.shape[1] for z in latents],
                                   tuple(self.cfg.model.patch), self.cfg.model.causal_tubelet, rng)
        loss, _ = flow_loss(_EngineModel(model), latents, texts, self.cfg.flow, generator,
                            drop_rate(self.cfg), self.pixel_decoder, cond_frames=cond)
        return loss, {}

    def after_step(self, step: int, weights) -> None:
        every = self.cfg.preview.every
        if every and step % every == 0:
            state = weights()
            if self.session.rank == 0:
                write_preview(state, self.cfg, self.encoders, step, self.session.device)

    def log_fields(self, seconds: float) -> dict:
        skipped = sum_over_ranks(self.loader.source.stats.get("skipped", 0), self.session.device)
        fields = {"skipped_data": skipped, "latent_positions_per_s": self.positions / max(seconds, 1e-9)}
        self.positions = 0
        return fields

    def samples(self) -> list[str]:
        return self.last_row

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])

    def export(self, weights: dict, folder: Path) -> None:
        model = VideoDiT(self.cfg.model)
        model.load_state_dict(weights)
        save_dit(model, folder, self.meta)


@torch.no_grad()
def write_preview(weights: dict, cfg: RunConfig, encoders, step: int, device) -> None:
    """Sample `cfg.preview.prompts` with `weights` into <output_dir>/samples/step<N>_<i>.mp4."""
    if encoders is None:
        log.info("preview videos need data.manifest mode (VAE + text encoder); skipped")
        return
    from videodit.pipeline import decode_to_mp4
    from videodit.sampling import Request, sample
    from videodit.video_request import VideoRequest, latent_shape

    vae, text_encoder = encoders
    model = VideoDiT(cfg.model).to(device).eval()
    model.load_state_dict(weights)
    frames, height, width = cfg.preview.size
    size = latent_shape(frames, height, width, vae.temporal_stride, vae.spatial_stride)
    texts, _ = text_encoder.encode(list(cfg.preview.prompts))
    reqs = [Request(size=size, text=t.float(), seed=i) for i, t in enumerate(texts)]
    latents = sample(model, reqs, steps=cfg.preview.steps, flow_cfg=cfg.flow, device=device, progress=False)
    folder = Path(cfg.train.output_dir) / "samples"
    for i, (prompt, z) in enumerate(zip(cfg.preview.prompts, latents)):
        request = VideoRequest(prompt, frames, height, width, i, "", folder / f"step{step:08d}_{i}.mp4")
        decode_to_mp4(z, request, vae, fps=8.0)


# ------------------------------------------------------------------ main


def main(argv=None) -> list[dict]:
    """Train; returns the logged records (also in <output_dir>/metrics.jsonl)."""
    args = parse_args(__doc__, argv)
    cfg = load_config(RunConfig, args.config, args.set)
    session = start(cfg.train, cfg.deepspeed)
    loader, encoders = build_data(cfg, session)
    model = VideoDiT(cfg.model)
    result = train(DiTTask(cfg, loader, encoders, session), model, cfg.train, cfg.deepspeed, session,
                   to_dict(cfg), export_name="ema")
    skipped = all_gather_object(loader.source.stats.get("skipped", 0))
    log.info("bad data skipped %d; EMA weights in %s", sum(skipped), session.out / "ema")
    return result.records


if __name__ == "__main__":
    main(sys.argv[1:])
