"""`CausalVAE3D`: a causal 3D video autoencoder that streams any length and tiles any resolution.

Video (B, 3, F, H, W) in [-1, 1] -> latent (B, c, T, h, w) with T = 1 + ceil((F - 1) / ts), h = H / ss.
The first frame is encoded on its own (an image is a 1-frame video); later frames in groups of ts. No
attention and only per-position norms, so temporal chunks (through explicit conv caches) and spatial
tiles (blended overlaps) need no global statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VAEConfig
from .layers import CausalConv3d, ChannelRMSNorm, Downsample3d, ResBlock3d, Upsample3d
from .tiling import run_tiled, tile_spans

DEFAULT_TILE = 512  # pixels; auto tiling (tile=None) kicks in above this height or width
TILE_OVERLAP = 64  # pixels of blended overlap between neighbouring tiles
PATCH_LOGVAR_INIT = -8.0  # initial posterior log-variance of arch "patch" (std 0.018)


def _run(modules: dict[str, nn.Module], x: torch.Tensor, cache: dict | None) -> tuple[torch.Tensor, dict]:
    """Chain cache-taking modules in order; the cache is {name: module cache}."""
    cache = cache or {}
    new = {}
    for name, mod in modules.items():
        if x.shape[2] == 0:  # a chunk too short to complete a strided step: keep the remaining caches
            new[name] = cache.get(name)
            continue
        if isinstance(mod, (CausalConv3d, ResBlock3d, Downsample3d, Upsample3d)):
            x, new[name] = mod(x, cache.get(name))
        else:
            x = mod(x)
    return x, new


class Encoder(nn.Module):
    """(B, 3, F, H, W) -> moments (B, 2c, T, h, w) for F = 1 + k * ts (streamable)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        p, widths, kt = cfg.patch_size, cfg.widths, cfg.temporal_kernel
        self.patch = p
        layers: dict[str, nn.Module] = {
            "conv_in": CausalConv3d(cfg.in_channels * p * p, widths[0], (kt, 3, 3)),
        }
        c = widths[0]
        for i, w in enumerate(widths):
            for j in range(cfg.num_res_blocks):
                layers[f"l{i}_res{j}"] = ResBlock3d(c, w, kt, cfg.norm_eps)
                c = w
            if i < len(widths) - 1:  # widen here too, so num_res_blocks=0 still follows channel_mult
                layers[f"l{i}_down"] = Downsample3d(c, widths[i + 1], temporal=cfg.temporal_down_at(i))
                c = widths[i + 1]
        layers["mid"] = ResBlock3d(c, c, kt, cfg.norm_eps)
        layers["norm_out"] = ChannelRMSNorm(c, cfg.norm_eps)
        layers["act_out"] = nn.SiLU()
        layers["conv_out"] = CausalConv3d(c, 2 * cfg.latent_channels, (kt, 3, 3))
        self.layers = nn.ModuleDict(layers)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        x = rearrange(x, "b c f (h p1) (w p2) -> b (c p1 p2) f h w", p1=self.patch, p2=self.patch)
        return _run(self.layers, x, cache)


class Decoder(nn.Module):
    """Latent (B, c, T, h, w) -> video (B, 3, 1 + (T - 1) * ts, H, W) (streamable; the caller trims)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        p, widths, kt = cfg.patch_size, cfg.widths, cfg.temporal_kernel
        self.patch = p
        c = widths[-1]
        layers: dict[str, nn.Module] = {
            "conv_in": CausalConv3d(cfg.latent_channels, c, (kt, 3, 3)),
            "mid": ResBlock3d(c, c, kt, cfg.norm_eps),
        }
        for i in reversed(range(len(widths))):
            for j in range(cfg.num_res_blocks):
                layers[f"l{i}_res{j}"] = ResBlock3d(c, widths[i], kt, cfg.norm_eps)
                c = widths[i]
            if i > 0:  # kernel_t=1: the residual blocks mix time; the x8-wide upsample conv stays cheap
                temporal = cfg.temporal_down_at(i - 1)
                layers[f"l{i}_up"] = Upsample3d(c, widths[i - 1], temporal=temporal, kernel_t=1)
                c = widths[i - 1]
        layers["norm_out"] = ChannelRMSNorm(c, cfg.norm_eps)
        layers["act_out"] = nn.SiLU()
        layers["conv_out"] = CausalConv3d(c, cfg.in_channels * p * p, (kt, 3, 3))
        self.layers = nn.ModuleDict(layers)

    def forward(self, z: torch.Tensor, cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        x, cache = _run(self.layers, z, cache)
        if x.shape[2] == 0:
            return x, cache
        x = rearrange(x, "b (c p1 p2) f h w -> b c f (h p1) (w p2)", p1=self.patch, p2=self.patch)
        return x, cache


class PatchEncoder(nn.Module):
    """arch "patch": (B, 3, F, H, W) -> moments (B, 2c, T, h, w), streamable over any chunking.

    The stream's first frame is replicated ts - 1 times in front, so 1 + k * ts frames make k + 1 whole
    (ts, ss, ss) patches; each patch goes through a pointwise MLP, then causal residual blocks mix
    neighbouring latents. Cache: {"buf": frames not yet forming a whole patch, "res<i>": block caches}.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.ts, self.ss, w = cfg.temporal_stride, cfg.spatial_stride, cfg.base_channels
        self.proj_in = nn.Conv3d(cfg.in_channels * self.ts * self.ss**2, w, 1)
        self.proj_mid = nn.Conv3d(w, w, 1)
        self.blocks = nn.ModuleList(
            ResBlock3d(w, w, cfg.temporal_kernel, cfg.norm_eps) for _ in range(cfg.num_res_blocks)
        )
        self.norm_out = ChannelRMSNorm(w, cfg.norm_eps)
        self.conv_out = nn.Conv3d(w, 2 * cfg.latent_channels, 1)
        with torch.no_grad():  # start nearly deterministic: unit posterior noise drowned the small initial
            self.conv_out.bias[cfg.latent_channels:].fill_(PATCH_LOGVAR_INIT)  # means and stalled training

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        if cache is None:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.ts - 1, -1, -1), x], dim=2)
        else:
            x = torch.cat([cache["buf"], x], dim=2)
        n = x.shape[2] // self.ts
        new = {"buf": x[:, :, n * self.ts:]}
        if n == 0:
            for i in range(len(self.blocks)):
                new[f"res{i}"] = (cache or {}).get(f"res{i}")
            b, _, _, h, w = x.shape
            return x.new_zeros(b, self.conv_out.out_channels, 0, h // self.ss, w // self.ss), new
        x = rearrange(x[:, :, : n * self.ts], "b c (t pt) (h p1) (w p2) -> b (c pt p1 p2) t h w",
                      pt=self.ts, p1=self.ss, p2=self.ss)
        x = self.proj_mid(F.silu(self.proj_in(x)))
        for i, block in enumerate(self.blocks):
            x, new[f"res{i}"] = block(x, (cache or {}).get(f"res{i}"))
        return self.conv_out(F.silu(self.norm_out(x))), new


class PatchDecoder(nn.Module):
    """arch "patch": latent (B, c, T, h, w) -> video (B, 3, 1 + (T - 1) * ts, H, W), streamable.

    Mirror of PatchEncoder; the stream's first latent yields only the last frame of its patch (the
    encoder's replicated padding). Cache: {"started": True, "res<i>": block caches}.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.ts, self.ss, w = cfg.temporal_stride, cfg.spatial_stride, cfg.base_channels
        self.conv_in = nn.Conv3d(cfg.latent_channels, w, 1)
        self.blocks = nn.ModuleList(
            ResBlock3d(w, w, cfg.temporal_kernel, cfg.norm_eps) for _ in range(cfg.num_res_blocks)
        )
        self.norm_out = ChannelRMSNorm(w, cfg.norm_eps)
        self.proj_mid = nn.Conv3d(w, w, 1)
        self.proj_out = nn.Conv3d(w, cfg.in_channels * self.ts * self.ss**2, 1)
        self.refine = None
        if cfg.refine_channels:  # per frame (so it streams): three 3x3 convs, residual
            r, c, k, pad = cfg.refine_channels, cfg.in_channels, (1, 3, 3), (0, 1, 1)
            self.refine = nn.Sequential(
                nn.Conv3d(c, r, k, padding=pad), nn.SiLU(), nn.Conv3d(r, r, k, padding=pad), nn.SiLU(),
                nn.Conv3d(r, c, k, padding=pad),
            )
            nn.init.zeros_(self.refine[-1].weight)  # identity at first: a trained decoder keeps its output
            nn.init.zeros_(self.refine[-1].bias)

    def forward(self, z: torch.Tensor, cache: dict | None = None,
                refine: bool = True) -> tuple[torch.Tensor, dict]:
        new: dict = {"started": True}
        x = self.conv_in(z)
        for i, block in enumerate(self.blocks):
            x, new[f"res{i}"] = block(x, (cache or {}).get(f"res{i}"))
        x = self.proj_out(F.silu(self.proj_mid(F.silu(self.norm_out(x)))))
        x = rearrange(x, "b (c pt p1 p2) t h w -> b c (t pt) (h p1) (w p2)",
                      pt=self.ts, p1=self.ss, p2=self.ss)
        if cache is None:
            x = x[:, :, self.ts - 1:]
        if refine and self.refine is not None and x.shape[2]:
            x = x + self.refine(x)
        return x, new


class CausalVAE3D(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.temporal_stride = cfg.temporal_stride
        self.spatial_stride = cfg.spatial_stride
        self.latent_channels = cfg.latent_channels
        self.encoder = PatchEncoder(cfg) if cfg.arch == "patch" else Encoder(cfg)
        self.decoder = PatchDecoder(cfg) if cfg.arch == "patch" else Decoder(cfg)
        self.register_buffer("latent_shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_scale", torch.ones(cfg.latent_channels))

    # ---- shapes and checks -------------------------------------------------------------------------
    def num_latent_frames(self, num_frames: int) -> int:
        return 1 + math.ceil((num_frames - 1) / self.temporal_stride)

    def _check_video(self, video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if video.ndim != 5:
            raise ValueError(f"video must have 5 dims (B, 3, F, H, W), got shape {tuple(video.shape)}")
        if video.shape[1] != self.config.in_channels:
            raise ValueError(f"video must have {self.config.in_channels} channels on dim 1, "
                             f"got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1], got dtype {video.dtype}")
        b, _, f, h, w = video.shape
        if f < 1 or b < 1:
            raise ValueError(f"video needs at least one sample and one frame, got shape {tuple(video.shape)}")
        ss = self.spatial_stride
        if h % ss or w % ss:
            raise ValueError(
                f"video height and width must be multiples of the spatial stride {ss}, got {h}x{w}"
            )
        if not torch.isfinite(video).all():
            raise ValueError("video contains NaN or infinite values")

    def _check_latent(self, latent: torch.Tensor, num_frames: int | None) -> int:
        if not isinstance(latent, torch.Tensor):
            raise ValueError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent must be (B, {self.latent_channels}, T, h, w), got shape {tuple(latent.shape)}"
            )
        if not latent.is_floating_point():
            raise ValueError(f"latent must be a float tensor, got dtype {latent.dtype}")
        if latent.shape[2] < 1:
            raise ValueError(f"latent needs at least one frame, got shape {tuple(latent.shape)}")
        if not torch.isfinite(latent).all():
            raise ValueError("latent contains NaN or infinite values")
        t = latent.shape[2]
        full = 1 + (t - 1) * self.temporal_stride
        if num_frames is None:
            return full
        if num_frames < 1 or self.num_latent_frames(num_frames) != t:
            raise ValueError(f"num_frames={num_frames} does not fit {t} latent frames "
                             f"(valid: {max(1, full - self.temporal_stride + 1)}..{full})")
        return num_frames

    def _tiles(self, h: int, w: int, tile: int | tuple[int, int] | None) -> tuple[list, list, int]:
        """Tile spans on the latent grid (h, w latent units) for tile size in pixels (None: auto, 0: off)."""
        ss = self.spatial_stride
        overlap = max(1, TILE_OVERLAP // ss)
        if tile is None:
            tile = DEFAULT_TILE if max(h, w) * ss > DEFAULT_TILE else 0
        if tile == 0:
            return [(0, h)], [(0, w)], overlap
        th, tw = (tile, tile) if isinstance(tile, int) else tile
        if th % ss or tw % ss or th <= TILE_OVERLAP or tw <= TILE_OVERLAP:
            raise ValueError(f"tile {tile} must be multiples of the spatial stride {ss} and > {TILE_OVERLAP}")
        return tile_spans(h, th // ss, overlap), tile_spans(w, tw // ss, overlap), overlap

    # ---- encode --------------------------------------------------------------------------------------
    def encode_moments(self, video: torch.Tensor, chunk_frames: int | None = None,
                       tile: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior (mean, logvar), each (B, c, T, h, w). Pads the tail to 1 + k * ts frames."""
        self._check_video(video)
        f = video.shape[2]
        padded = 1 + (self.num_latent_frames(f) - 1) * self.temporal_stride
        step = padded if chunk_frames is None else chunk_frames
        if step < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        ss = self.spatial_stride
        spans_h, spans_w, overlap = self._tiles(video.shape[3] // ss, video.shape[4] // ss, tile)
        caches: dict = {}
        parts = []
        for start in range(0, padded, step):
            end = min(start + step, padded)
            chunk = video[:, :, start: min(end, f)]  # (B, 3, f', H, W)
            if end > f:  # the tail is padded with copies of the last frame, chunk by chunk (no full copy)
                tail = video[:, :, -1:].expand(-1, -1, end - max(start, f), -1, -1)
                chunk = torch.cat([chunk, tail], dim=2)
            part = run_tiled(self.encoder, chunk, caches, spans_h, spans_w, ss, 1, overlap)
            if part.shape[2]:
                parts.append(part)
        moments = torch.cat(parts, dim=2)  # (B, 2c, T, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def encode(self, video: torch.Tensor, chunk_frames: int | None = None,
               tile: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> normalised posterior mean (B, c, T, h, w).

        chunk_frames: frames per streamed step (None: one pass; results agree to ~1e-6).
        tile: spatial tile in pixels, int or (h, w) multiples of ss; None = auto (512 px tiles when H or W
        exceeds 512), 0 = never tile. Tiles overlap by 64 px and are blended (see vae3d.tiling).
        """
        mean, _ = self.encode_moments(video, chunk_frames, tile)
        return (mean - self.latent_shift.view(1, -1, 1, 1, 1)) / self.latent_scale.view(1, -1, 1, 1, 1)

    # ---- decode --------------------------------------------------------------------------------------
    def decode_stream(
        self, latent: torch.Tensor, num_frames: int | None = None, chunk_frames: int | None = 16,
        tile: int | tuple[int, int] | None = None, normalised: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield pixel chunks (B, 3, f, H, W) in order; they concatenate to `decode(...)`.

        `chunk_frames` is about how many pixel frames each step makes (rounded to whole latent frames,
        None = everything at once). Memory is bounded by the chunk and the tile, not the clip length.
        """
        total = self._check_latent(latent, num_frames)
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if normalised:
            latent = self._denormalise(latent)
        t = latent.shape[2]
        step = t if chunk_frames is None else max(1, chunk_frames // self.temporal_stride)
        ss = self.spatial_stride
        spans_h, spans_w, overlap = self._tiles(latent.shape[3], latent.shape[4], tile)
        caches: dict = {}
        emitted = 0
        for start in range(0, t, step):
            z = latent[:, :, start: start + step]
            x = run_tiled(self.decoder, z, caches, spans_h, spans_w, 1, ss, overlap)  # (B, 3, f, H, W)
            x = x[:, :, : total - emitted]
            emitted += x.shape[2]
            if x.shape[2]:
                yield x

    def decode(self, latent: torch.Tensor, num_frames: int | None = None, chunk_frames: int | None = None,
               tile: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Normalised latent (B, c, T, h, w) -> video (B, 3, F, H, W); F = num_frames or 1 + (T - 1) * ts."""
        return torch.cat(list(self.decode_stream(latent, num_frames, chunk_frames, tile)), dim=2)

    def _denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.latent_scale.view(1, -1, 1, 1, 1) + self.latent_shift.view(1, -1, 1, 1, 1)

    def decode_coarse(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, c, T, h, w) -> video (B, 3, F, H, W) in one differentiable pass, without
        the pixel refiner (arch "patch"; the conv decoder runs whole): a cheap decoder for losses."""
        self._check_latent(latent, None)
        latent = self._denormalise(latent)
        if isinstance(self.decoder, PatchDecoder):
            return self.decoder(latent, refine=False)[0]
        return self.decoder(latent)[0]

    # ---- training ------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """video (B, 3, F, H, W) -> (recon (B, 3, F, H, W), mean, logvar (B, c, T, h, w)), unnormalised."""
        mean, logvar = self.encode_moments(video, tile=0)
        z = mean
        if sample:
            gen_device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype)
            noise = noise.to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * noise
        recon = torch.cat(list(self.decode_stream(z, video.shape[2], None, 0, normalised=False)), dim=2)
        return recon, mean, logvar

    @torch.no_grad()
    def set_latent_stats(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Store per-channel latent shift/scale (c,) so encode() returns roughly unit-variance latents."""
        shift, scale = torch.as_tensor(shift).flatten(), torch.as_tensor(scale).flatten()
        c = self.latent_channels
        if shift.numel() != c or scale.numel() != c:
            raise ValueError(f"shift and scale must have {c} values, got {shift.numel()} and {scale.numel()}")
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ValueError(f"scale must be finite and positive, got {scale.tolist()}")
        self.latent_shift.copy_(shift)
        self.latent_scale.copy_(scale)


