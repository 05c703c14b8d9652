"""Train the video DiT with rectified flow on NaViT-packed rows, under DeepSpeed ZeRO.

    deepspeed --num_accelerators 2 train_video.py --config configs/debug.yaml --set train.max_steps=20
    python train_video.py --config configs/debug.yaml          (one rank)
    deepspeed --num_accelerators 4 train_video.py ... --set parallel.sequence=2   (2 rows of 2 ranks each)

Rows are filled by estimated compute cost (`videodit.cost_model`) and every data-parallel rank gets a row
of the same cost at each step (`data.balanced_loader.CostBalancedLoader`). `parallel.sequence=N` splits
each row's tokens across N ranks (Ulysses sequence parallelism, `videodit.sequence_parallel`): a row holds
N x data.row_tokens tokens, so a sample up to that size trains; data parallelism with ZeRO runs over the
world size / N rows. `train.memory_budget_gb` derives data.row_tokens from one rank's memory instead.
Every log record (metrics.jsonl, tensorboard) has the rows' packing efficiency, tokens/s over all ranks,
TFLOP/s per rank by the cost model and, with `train.peak_tflops`, the estimated MFU.

Data: raw videos from `data.manifest` (decoded, VAE- and text-encoded on the fly) or a latent cache
from `python -m data.precache` (`data.cache`). The loop, checkpoints and resume are `videodit.trainer`'s;
each checkpoint holds the EMA weights as a `save_dit` folder (`ema/`) that `generate.py --ckpt` loads, and
`<output_dir>/ema` is the newest of them.

Fine-tuning Wan2.1 / Wan2.2 TI2V-5B: `train.init_from=<WanPipeline folder or Wan transformer folder>` takes
the architecture and weights from that folder (videodit.wan_finetune; the model section may set only
attention, grad_checkpointing and lora). `model.lora.rank` > 0 trains LoRA layers only and exports
`ema/lora.safetensors` (diffusers/PEFT format); rank 0 fine-tunes every weight and exports
`ema/transformer/` as a diffusers folder (a whole WanPipeline folder when init_from was one).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from data.balanced_loader import CostBalancedLoader
from data.loader import WeightedSource
from data.precache import LatentCache
from data.sampling import SamplingConfig
from data.tasks import check_mix, condition_row
from videodit import wan_finetune
from videodit.checkpoint import load_dit, save_dit
from videodit.config import load_config, to_dict
from videodit.cost_model import CostModel, cost_model, row_tokens_for_memory, step_metrics
from videodit.distributed import DeepSpeedConfig, all_gather_object, sum_over_ranks
from videodit.flow import FlowConfig, flow_loss
from videodit.lora import LoRAConfig
from videodit.model import DiTConfig, VideoDiT
from videodit.packing import num_tokens
from videodit.sequence_parallel import ParallelConfig, ParallelGroups, parallel_groups
from videodit.trainer import Session, TrainConfig, load_matching, parse_args, start, train

log = logging.getLogger("train_video")


@dataclass
class DataConfig:
    manifest: str = ""  # CSV / JSONL / folder of clips (raw videos, encoded on the fly)
    cache: str = ""  # latent cache folder from data.precache; used instead of the manifest when set
    vae: str = "default"  # vae3d.load_vae name/path (raw mode; recorded in checkpoints)
    text_encoder: str = "default"  # videodit.text_encoder name/path
    # token budget of one packed row per rank (= one micro-batch); a row of parallel.sequence ranks holds
    # that many times more. train.memory_budget_gb > 0 derives it instead.
    row_tokens: int = 1024
    min_tokens: int = 64  # per-clip random token target lies in [min_tokens, max_tokens]
    max_tokens: int = 1024
    # NaViT token dropping for large samples: a sample with more tokens trains on a random keep_tokens of
    # them (0 = keep all); rows are planned with the kept counts, so 720p clips fit small rows
    keep_tokens: int = 0
    # Conditioning tasks mixed into every row ({task: weight}): t2v, i2v (latent frame 0 given), extend (a
    # prefix of whole token groups given), first_last (frame 0 and the last frame given; a latent cache
    # needs precache --last-frame); see data/tasks.py. The checkpoint's meta lists them.
    tasks: dict[str, float] = field(default_factory=lambda: {"t2v": 1.0})
    target_fps: float = 8.0
    min_frames: int = 1
    max_frames: int = 33
    window: int = 32  # samples planned into rows together
    token_drop: float = 0.0  # NaViT token dropping: this share of each clip's tokens is left out of a row
    # Sampling weights by size, latent cache only ({longest side in pixels: weight}): a cached clip whose
    # longer side is at most a key (the smallest such key) is drawn that many times an epoch on average
    # (0.1: one epoch in ten); a clip above every key is left out. Empty: every clip once an epoch.
    size_weights: dict[int, float] = field(default_factory=dict)

    def __post_init__(self):
        check_mix(self.tasks)
        if self.row_tokens < 1 or self.keep_tokens < 0:
            raise ValueError(f"data.row_tokens must be >= 1 and data.keep_tokens >= 0, got "
                             f"{self.row_tokens}, {self.keep_tokens}")
        if not 0.0 <= self.token_drop < 1.0:
            raise ValueError(f"data.token_drop must be in [0, 1), got {self.token_drop}")
        if self.size_weights and (not all(isinstance(k, int) and k > 0 for k in self.size_weights)
                                  or not all(w >= 0 for w in self.size_weights.values())
                                  or not any(w > 0 for w in self.size_weights.values())):
            raise ValueError(f"data.size_weights must map sizes in pixels (integers > 0) to weights >= 0, "
                             f"one of them > 0, got {self.size_weights}")

    def size_weight(self, side: int) -> float:
        """The data.size_weights weight of a clip whose longer side is `side` pixels."""
        fits = [k for k in self.size_weights if side <= k]
        return self.size_weights[min(fits)] if fits else 0.0

    def check_fits(self, rank_tokens: int, sequence: int) -> None:
        """A clip must fit a row of `sequence` ranks of `rank_tokens` tokens each."""
        row = rank_tokens * sequence
        if self.keep_tokens > row:
            raise ValueError(f"data.keep_tokens ({self.keep_tokens}) must be in [0, {row}] (data.row_tokens "
                             f"{rank_tokens} x parallel.sequence {sequence})")
        if min(self.max_tokens, self.keep_tokens or self.max_tokens) > row:
            raise ValueError(
                f"data.max_tokens ({self.max_tokens}) must be <= {row} (data.row_tokens {rank_tokens} x "
                f"parallel.sequence {sequence}) unless data.keep_tokens caps it: a clip must fit a row; "
                f"split rows across ranks with sequence parallelism: parallel.sequence="
                f"{-(-self.max_tokens // rank_tokens)} or more"
            )


@dataclass
class VideoTrainConfig(TrainConfig):
    # One rank's memory (GiB) for model state and activations; > 0 derives data.row_tokens from it with the
    # cost model (videodit.cost_model.row_tokens_for_memory) instead of taking it as given
    memory_budget_gb: float = 0.0
    peak_tflops: float = 0.0  # one rank's peak (bf16 matmul) TFLOP/s, for the logged MFU; 0 = not logged

    def __post_init__(self):
        super().__post_init__()
        if self.memory_budget_gb < 0 or self.peak_tflops < 0:
            raise ValueError(f"train.memory_budget_gb and train.peak_tflops must be >= 0 (0 = off), got "
                             f"{self.memory_budget_gb}, {self.peak_tflops}")


@dataclass
class PreviewConfig:
    """Sample videos from the EMA weights during training, written to <output_dir>/samples/ as mp4s and to
    tensorboard (first, middle and last frame). It needs the VAE and the text encoder: raw-data mode, or a
    Wan fine-tune from a WanPipeline folder (whose parts it loads)."""

    every: int = 0  # steps between previews; 0 = off
    prompts: tuple[str, ...] = ("a red ball bouncing",)
    size: tuple[int, int, int] = (5, 32, 32)  # frames, height, width
    steps: int = 20  # sampling steps
    guidance: float = 5.0  # classifier-free guidance scale (a Wan model's unconditional text is "")


@dataclass
class ModelConfig(DiTConfig):
    """The DiT's architecture, plus how to adapt a pretrained one."""

    # LoRA of a pretrained Wan (train.init_from a Wan folder): rank > 0 trains only the LoRA layers
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=0))


def architecture(model: ModelConfig) -> DiTConfig:
    """The DiTConfig part of the model section (what VideoDiT and its checkpoints hold)."""
    return DiTConfig(**{f.name: getattr(model, f.name) for f in fields(DiTConfig)})


def model_keys(args) -> set[str]:
    """The model keys a run's YAML file and --set overrides name."""
    import yaml

    data = yaml.safe_load(Path(args.config).read_text()) if args.config else None
    keys = set((data or {}).get("model") or {})
    return keys | {s.split("=", 1)[0].split(".")[1] for s in args.set if s.startswith("model.")}


def is_wan(cfg: RunConfig) -> bool:
    """True when the run fine-tunes a pretrained Wan (train.init_from is a Wan folder)."""
    return bool(cfg.train.init_from) and wan_finetune.is_wan_folder(cfg.train.init_from)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: VideoTrainConfig = field(default_factory=VideoTrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self):
        if self.flow.pixel_weight > 0 and (self.data.token_drop > 0 or self.data.keep_tokens > 0):
            raise ValueError("flow.pixel_weight > 0 needs data.token_drop 0 (a dropped token has no x0 "
                             f"prediction to decode), got token_drop {self.data.token_drop}")
        if self.data.size_weights and not self.data.cache:
            raise ValueError("data.size_weights needs a latent cache (data.cache): it weighs clips by their "
                             "cached size")
        sequence = self.parallel.sequence
        if self.flow.pixel_weight > 0 and sequence > 1:
            raise ValueError(f"flow.pixel_weight > 0 needs whole samples on one rank; it cannot run with "
                             f"parallel.sequence={sequence}")
        if self.model.num_heads % sequence:
            raise ValueError(f"parallel.sequence={sequence} must divide model.num_heads "
                             f"({self.model.num_heads}): each rank attends with its share of the heads")
        if not self.train.memory_budget_gb:
            self.data.check_fits(self.data.row_tokens, sequence)


# ------------------------------------------------------------------ data


def rank_row_tokens(cfg: RunConfig, model: VideoDiT, cost: CostModel, groups: ParallelGroups) -> int:
    """One rank's share of a row's token budget: data.row_tokens, or what train.memory_budget_gb leaves
    for activations after the model state (ZeRO-partitioned over all ranks)."""
    if not cfg.train.memory_budget_gb:
        return cfg.data.row_tokens
    row = row_tokens_for_memory(cfg.train.memory_budget_gb, cost, sum(p.numel() for p in model.parameters()),
                                cfg.deepspeed.precision, cfg.deepspeed.zero_stage, groups.data_size,
                                groups.sequence_size)
    rank_tokens = row // groups.sequence_size
    if rank_tokens < 1:
        raise ValueError(f"train.memory_budget_gb={cfg.train.memory_budget_gb} leaves no room for a single "
                         f"token's activations; raise it")
    cfg.data.check_fits(rank_tokens, groups.sequence_size)
    log.info("row budget %d tokens per rank from train.memory_budget_gb=%g", rank_tokens,
             cfg.train.memory_budget_gb)
    return rank_tokens


def build_data(cfg: RunConfig, session: Session, groups: ParallelGroups, rank_tokens: int, cost: CostModel):
    """-> (loader, encoders) where encoders = (vae, text_encoder) in raw mode, None with a cache.

    The loader serves data-parallel rank `groups.data_rank` of `groups.data_size`: the ranks of one
    sequence group get the same rows. Rows hold `rank_tokens` x the sequence size tokens, filled by cost."""
    if cfg.data.cache:
        source = cached_source(cfg)
        encoders = None
    elif cfg.data.manifest:
        from data.dataset import VideoDataset
        from vae3d.io import load_vae
        from videodit.text_encoder import TextEncoder

        vae_path, text_path = cfg.data.vae, cfg.data.text_encoder
        if is_wan(cfg):  # the pipeline folder's VAE and UMT5 unless data.vae / data.text_encoder are given
            base = cfg.train.init_from
            if "default" in (vae_path, text_path) and not wan_finetune.is_pipeline_folder(base):
                raise ValueError(f"train.init_from {base!r} is a Wan transformer folder: set data.vae "
                                 "and data.text_encoder to its pipeline's vae/ and text_encoder/ (or "
                                 "init_from the WanPipeline folder)")
            vae_path = str(Path(base) / "vae") if vae_path == "default" else vae_path
            text_path = base if text_path == "default" else text_path
        vae = load_vae(vae_path, device=session.device).eval().requires_grad_(False)
        text_encoder = (wan_finetune.text_encoder_for(text_path, device=session.device) if is_wan(cfg)
                        else TextEncoder(text_path, device=session.device))
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
    loader = CostBalancedLoader(source, rank_tokens, cost.sample_flops, seed=cfg.train.seed,
                                rank=groups.data_rank, world_size=groups.data_size,
                                sequence=groups.sequence_size, window=cfg.data.window,
                                keep_tokens=cfg.data.keep_tokens)
    return loader, encoders


def cached_source(cfg: RunConfig):
    """The loader source over data.cache, drawn by data.size_weights when set."""
    source = LatentCache(cfg.data.cache, patch=cfg.model.patch, causal=cfg.model.causal_tubelet)
    if cfg.data.tasks.get("first_last", 0) > 0 and not source.index.get("settings", {}).get("last_frame"):
        raise ValueError(f"data.tasks first_last needs each clip's last frame, and the latent cache "
                         f"{cfg.data.cache!r} has none: rebuild it with python -m data.precache --last-frame")
    if not cfg.data.size_weights:
        return source
    stride = source.index["sampling"]["spatial_stride"]
    weights = [cfg.data.size_weight(max(s["latent_shape"][2:]) * stride) for s in source.samples]
    if not any(weights):
        raise ValueError(f"data.size_weights {cfg.data.size_weights} gives every clip of the latent cache "
                         f"{cfg.data.cache!r} weight 0")
    log.info("data.size_weights: %d of %d cached clips drawn per epoch on average", round(sum(weights)),
             len(weights))
    return WeightedSource(source, weights, seed=cfg.train.seed)


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
def row_to_latents(row: list[dict], encoders, device, last_frames: bool = False
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """A loader row -> (latents [(c, T, h, w)], text embeddings [(L, D)], last frames [(c, 1, h, w) or
    None]) on `device`. The last frame is the clip's last video frame encoded alone (`videodit.last_frame`):
    the cache's, or with `last_frames` encoded here from a raw clip."""
    if encoders is None:
        lasts = [s["last"].to(device) if "last" in s else None for s in row]
        return [s["latent"].to(device) for s in row], [s["text"].to(device) for s in row], lasts
    vae, text_encoder = encoders
    latents = [vae.encode(s["video"][None].to(device))[0] for s in row]  # each (c, T, h, w)
    lasts = [vae.encode(s["video"][None, :, -1:].to(device))[0] if last_frames and s["video"].shape[1] > 1
             else None for s in row]  # each (c, 1, h, w)
    texts, _ = text_encoder.encode([s["caption"] for s in row])
    return latents, [t.float() for t in texts], lasts


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

    def forward_packed(self, packed, timesteps, token_timesteps=None, self_attention=None):
        return self.engine(packed, timesteps, token_timesteps, self_attention)


# ------------------------------------------------------------------ the task


class DiTTask:
    """Rectified-flow loss on the loader's packed rows (`videodit.trainer.Task`); the ranks of a sequence
    group share each row (`groups`)."""

    def __init__(self, cfg: RunConfig, loader: CostBalancedLoader, encoders, session: Session,
                 groups: ParallelGroups, cost: CostModel):
        self.cfg, self.loader, self.encoders, self.session = cfg, loader, encoders, session
        self.groups, self.cost = groups, cost
        self.pixel_decoder = build_pixel_decoder(cfg, session.device)
        self.meta = dit_meta(cfg)
        self.rows = None  # iterator, made at the first step (after a resume restored the loader)
        self.positions = 0  # latent positions trained on since the last log record
        self.trained: list[tuple[list[int], list[int]]] = []  # (video, text) tokens per sample of each row
        self.wan = is_wan(cfg)
        self.preview_only = False  # encoders loaded for previews only (a cache-mode Wan fine-tune)
        self.empty_text = None  # a Wan model's padded "" text: what a dropped sample attends to
        if self.wan:
            self.empty_text = (wan_finetune.empty_text(encoders[1]) if encoders is not None
                               else LatentCache.empty_text(cfg.data.cache)).to(session.device)
        self.last_row: list[str] = []  # the paths of the row trained on last

    def init_from(self, model, folder: str) -> None:
        if self.wan:
            return  # the model was built from the folder's weights (wan_finetune.load_for_training)
        init_weights(model, folder)

    def loss(self, model, step: int, generator: torch.Generator):
        if self.rows is None:
            self.rows = iter(self.loader)
        row = next(self.rows)
        self.last_row = [str(s["path"]) for s in row]
        encoders = None if self.preview_only else self.encoders
        last_frames = self.cfg.data.tasks.get("first_last", 0) > 0
        latents, texts, lasts = row_to_latents(row, encoders, self.session.device, last_frames)
        self.positions += sum(z[0].numel() for z in latents)
        lengths = [num_tokens(tuple(z.shape[1:]), tuple(self.cfg.model.patch), self.cfg.model.causal_tubelet)
                   for z in latents]
        keep = self.cfg.data.keep_tokens
        self.trained.append(([min(n, keep) if keep else n for n in lengths], [e.shape[0] for e in texts]))
        cond = None
        if {k for k, w in self.cfg.data.tasks.items() if w > 0} != {"t2v"}:
            rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
            _, latents, cond = condition_row(self.cfg.data.tasks, latents, lasts, tuple(self.cfg.model.patch),
                                             self.cfg.model.causal_tubelet, rng)
        if self.wan:
            texts = wan_finetune.pad_texts(texts)
        loss, _ = flow_loss(_EngineModel(model), latents, texts, self.cfg.flow, generator,
                            drop_rate(self.cfg), self.pixel_decoder, cond_frames=cond, parallel=self.groups,
                            empty_text=self.empty_text)
        return loss, {}

    def after_step(self, step: int, weights) -> None:
        every = self.cfg.preview.every
        if every and step % every == 0:
            state = weights()
            if self.session.rank == 0:
                base = self.cfg.train.init_from
                if self.encoders is None and self.wan and wan_finetune.is_pipeline_folder(base):
                    self.encoders = preview_encoders(base, self.session.device)
                    self.preview_only = True
                paths = write_preview(state, self.cfg, self.encoders, step, self.session.device)
                if paths:
                    preview_to_tensorboard(paths, Path(self.cfg.train.output_dir) / "tb", step)

    def log_fields(self, seconds: float) -> dict:
        lead = self.groups.sequence_rank == 0  # the ranks of a sequence group read the same samples
        skipped = sum_over_ranks(self.loader.source.stats.get("skipped", 0) if lead else 0,
                                 self.session.device)
        fields = {"skipped_data": skipped, "latent_positions_per_s": self.positions / max(seconds, 1e-9),
                  **self.throughput(seconds)}
        self.positions = 0
        return fields

    def throughput(self, seconds: float) -> dict:
        """Packing efficiency (tokens over the row budget), tokens/s over all ranks, TFLOP/s per rank and
        estimated MFU (with train.peak_tflops) of the rows trained since the last record (collective)."""
        if not self.trained:
            return {}
        size = self.groups.sequence_size
        peak = self.cfg.train.peak_tflops * 1e12 * size if self.cfg.train.peak_tflops else None  # a group's
        m = step_metrics([v for v, _ in self.trained], self.loader.budget, max(seconds, 1e-9), self.cost,
                         peak, [t for _, t in self.trained])
        self.trained = []
        # every rank of a sequence group holds its row's figures: means over ranks are means over rows
        fields = {"packing_efficiency": m["packing_efficiency"], "tokens_per_s": m["tokens_per_s"],
                  "tflops_per_rank": m["tflops"] / size, **({"mfu": m["mfu"]} if "mfu" in m else {})}
        values = torch.tensor(list(fields.values()), dtype=torch.float64, device=self.session.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
            values /= self.session.world
        fields = dict(zip(fields, values.tolist()))
        fields["tokens_per_s"] *= self.groups.data_size  # the rows of all data-parallel ranks together
        return fields

    def samples(self) -> list[str]:
        return self.last_row

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])

    def export(self, weights: dict, folder: Path) -> None:
        if self.wan:
            wan_finetune.export(weights, architecture(self.cfg.model), self.cfg.model.lora, folder,
                                self.cfg.train.init_from)
            return
        model = VideoDiT(architecture(self.cfg.model))
        model.load_state_dict(weights)
        save_dit(model, folder, self.meta)


def preview_encoders(folder: str, device):
    """A WanPipeline folder's (VAE, Wan prompt encoder), for previews of a fine-tune from a latent cache."""
    from vae3d.io import load_vae

    vae = load_vae(Path(folder) / "vae", device=device).eval().requires_grad_(False)
    return vae, wan_finetune.text_encoder_for(folder, device=device)


def preview_to_tensorboard(paths: list[Path], folder: Path, step: int) -> None:
    """Each preview mp4's first, middle and last frame as images `preview/<i>` in tensorboard at `step`."""
    from torch.utils.tensorboard import SummaryWriter

    from videodit.mp4 import read_mp4

    with SummaryWriter(str(folder)) as writer:
        for i, path in enumerate(paths):
            frames = read_mp4(path)  # (F, H, W, 3) uint8
            picked = frames[[0, len(frames) // 2, len(frames) - 1]]
            writer.add_images(f"preview/{i}", picked, step, dataformats="NHWC")


@torch.no_grad()
def write_preview(weights: dict, cfg: RunConfig, encoders, step: int, device) -> list[Path]:
    """Sample `cfg.preview.prompts` with `weights` into <output_dir>/samples/step<N>_<i>.mp4 -> the paths
    (none when there is no VAE and text encoder)."""
    if encoders is None:
        log.info("preview videos need data.manifest mode (VAE + text encoder) or a WanPipeline init_from; "
                 "skipped")
        return []
    from videodit.pipeline import decode_to_mp4
    from videodit.sampling import Request, sample
    from videodit.video_request import VideoRequest, latent_shape

    vae, text_encoder = encoders
    frames, height, width = cfg.preview.size
    size = latent_shape(frames, height, width, vae.temporal_stride, vae.spatial_stride)
    texts, _ = text_encoder.encode(list(cfg.preview.prompts))
    if is_wan(cfg):
        from videodit.wan_sampling import sample_wan

        model = wan_finetune.merged_model(architecture(cfg.model), weights, cfg.model.lora).to(device)
        empty = wan_finetune.empty_text(text_encoder)
        reqs = [Request(size=size, text=t.float(), seed=i, negative=empty)
                for i, t in enumerate(wan_finetune.pad_texts(texts))]
        latents = sample_wan(model, reqs, wan_finetune.scheduler_config(cfg.train.init_from),
                             steps=cfg.preview.steps, guidance=cfg.preview.guidance, device=device,
                             progress=False)
    else:
        model = VideoDiT(architecture(cfg.model)).to(device).eval()
        model.load_state_dict(weights)
        reqs = [Request(size=size, text=t.float(), seed=i) for i, t in enumerate(texts)]
        latents = sample(model, reqs, steps=cfg.preview.steps, guidance=cfg.preview.guidance,
                         flow_cfg=cfg.flow, device=device, progress=False)
    folder = Path(cfg.train.output_dir) / "samples"
    paths = []
    for i, (prompt, z) in enumerate(zip(cfg.preview.prompts, latents)):
        request = VideoRequest(prompt, frames, height, width, i, "", folder / f"step{step:08d}_{i}.mp4")
        decode_to_mp4(z, request, vae, fps=8.0)
        paths.append(request.out)
    return paths


# ------------------------------------------------------------------ main


def main(argv=None) -> list[dict]:
    """Train; returns the logged records (also in <output_dir>/metrics.jsonl)."""
    args = parse_args(__doc__, argv)
    cfg = load_config(RunConfig, args.config, args.set)
    base = cfg.train.init_from
    if is_wan(cfg):
        dit_cfg = wan_finetune.wan_model_config(base, architecture(cfg.model), model_keys(args))
        cfg.model = ModelConfig(**{f.name: getattr(dit_cfg, f.name) for f in fields(DiTConfig)},
                                lora=cfg.model.lora)
    elif cfg.model.lora.rank:
        raise ValueError(f"model.lora.rank={cfg.model.lora.rank} needs train.init_from a pretrained Wan "
                         f"folder (WanPipeline or WanTransformer3DModel); got {base!r}")
    session = start(cfg.train, cfg.deepspeed)
    groups = parallel_groups(cfg.parallel.sequence)  # every rank, in the same order
    session = dataclasses.replace(session, sequence=groups.sequence_size)
    if is_wan(cfg):
        log.info("model architecture from %s (Wan: %d blocks, width %d, ffn %d), not the config's model "
                 "section; %s", base, cfg.model.depth, cfg.model.hidden_size, cfg.model.ffn_dim,
                 f"LoRA rank {cfg.model.lora.rank}" if cfg.model.lora.rank else "full fine-tune")
    model = (wan_finetune.load_for_training(base, architecture(cfg.model), cfg.model.lora) if is_wan(cfg)
             else VideoDiT(architecture(cfg.model)))
    cost = cost_model(architecture(cfg.model), cfg.deepspeed.precision)
    rank_tokens = rank_row_tokens(cfg, model, cost, groups)
    loader, encoders = build_data(cfg, session, groups, rank_tokens, cost)
    if groups.sequence_size > 1:
        log.info("sequence parallelism: %d rows of %d ranks, %d tokens per row", groups.data_size,
                 groups.sequence_size, loader.budget)
    result = train(DiTTask(cfg, loader, encoders, session, groups, cost), model, cfg.train, cfg.deepspeed,
                   session, to_dict(cfg), export_name="ema")
    skipped = all_gather_object(loader.source.stats.get("skipped", 0))
    log.info("bad data skipped %d; EMA weights in %s", sum(skipped), session.out / "ema")
    return result.records


if __name__ == "__main__":
    main(sys.argv[1:])
