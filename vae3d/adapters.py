"""Adapters that give diffusers video VAEs the CausalVAE3D interface (encode / decode / decode_stream).

Supported folders (detected by `_class_name` in config.json): AutoencoderKLWan, AutoencoderKLCogVideoX,
AutoencoderKLHunyuanVideo, AutoencoderKLLTXVideo. Latents are the posterior mean normalised with the
statistics each model ships (latents_mean/std or scaling/shift factor), so the DiT sees ~unit variance.
Unlike CausalVAE3D, `decode_stream` here decodes the whole clip and then yields it in chunks (diffusers
decoders have no resumable cache), and `chunk_frames` / `tile` are accepted but only `tile` is honoured
(through diffusers' own `enable_tiling`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

ADAPTED_CLASSES = (
    "AutoencoderKLWan", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo",
)


def _strides_and_stats(vae: nn.Module, name: str) -> tuple[int, int, int, torch.Tensor, torch.Tensor]:
    """(temporal_stride, spatial_stride, latent_channels, shift (c,), scale (c,)) of a diffusers VAE."""
    cfg = vae.config
    if name == "AutoencoderKLWan":
        ts = cfg.scale_factor_temporal or 2 ** sum(cfg.temperal_downsample)
        ss = cfg.scale_factor_spatial or 2 ** (len(cfg.dim_mult) - 1)
        c = cfg.z_dim
        shift, scale = torch.tensor(cfg.latents_mean[:c]), torch.tensor(cfg.latents_std[:c])
    elif name == "AutoencoderKLLTXVideo":
        ts, ss, c = vae.temporal_compression_ratio, vae.spatial_compression_ratio, cfg.latent_channels
        shift, scale = vae.latents_mean.float().clone(), vae.latents_std.float() / cfg.scaling_factor
    else:  # CogVideoX, HunyuanVideo: one scaling factor (and CogVideoX's optional shift)
        ts, c = int(cfg.temporal_compression_ratio), cfg.latent_channels
        ss = getattr(cfg, "spatial_compression_ratio", None) or 2 ** (len(cfg.block_out_channels) - 1)
        shift = torch.full((c,), float(getattr(cfg, "shift_factor", None) or 0.0))
        scale = torch.full((c,), 1.0 / cfg.scaling_factor)
    return int(ts), int(ss), int(c), shift.float(), scale.float()


class DiffusersVAEAdapter(nn.Module):
    """Wrap a diffusers video VAE; same attributes and methods as CausalVAE3D (see vae3d.model)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        name = type(vae).__name__
        if name not in ADAPTED_CLASSES:
            raise ValueError(f"no adapter for {name}; supported: {', '.join(ADAPTED_CLASSES)}")
        self.vae = vae
        self.config = vae.config
        self.class_name = name
        self.is_random_init = False
        ts, ss, c, shift, scale = _strides_and_stats(vae, name)
        self.temporal_stride, self.spatial_stride, self.latent_channels = ts, ss, c
        self.register_buffer("latent_shift", shift)
        self.register_buffer("latent_scale", scale)

    def num_latent_frames(self, num_frames: int) -> int:
        return 1 + math.ceil((num_frames - 1) / self.temporal_stride)

    def _norm_view(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1, 1, 1, 1)
        return self.latent_shift.view(view).to(ref), self.latent_scale.view(view).to(ref)

    def _set_tiling(self, tile) -> None:
        if tile and hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()
        elif hasattr(self.vae, "disable_tiling"):
            self.vae.disable_tiling()

    def encode(self, video: torch.Tensor, chunk_frames: int | None = None, tile=0) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1] -> normalised posterior mean (B, c, T, h, w)."""
        if video.ndim != 5 or video.shape[1] != 3 or not video.is_floating_point():
            raise ValueError(f"video must be float (B, 3, F, H, W), got {tuple(video.shape)} {video.dtype}")
        if video.shape[3] % self.spatial_stride or video.shape[4] % self.spatial_stride:
            raise ValueError(f"video height and width must be multiples of the spatial stride "
                             f"{self.spatial_stride}, got {video.shape[3]}x{video.shape[4]}")
        if not torch.isfinite(video).all():
            raise ValueError("video contains NaN or infinite values")
        f = video.shape[2]
        padded = 1 + (self.num_latent_frames(f) - 1) * self.temporal_stride
        if padded > f:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, padded - f, -1, -1)], dim=2)
        self._set_tiling(tile)
        param = next(self.vae.parameters())
        mean = self.vae.encode(video.to(param)).latent_dist.mean  # (B, c, T, h, w)
        shift, scale = self._norm_view(mean)
        return ((mean - shift) / scale).to(video.dtype)

    def decode_stream(self, latent: torch.Tensor, num_frames: int | None = None,
                      chunk_frames: int | None = 16, tile=None) -> Iterator[torch.Tensor]:
        video = self.decode(latent, num_frames, tile=tile)
        step = video.shape[2] if chunk_frames is None else chunk_frames
        for start in range(0, video.shape[2], step):
            yield video[:, :, start: start + step]

    def decode(self, latent: torch.Tensor, num_frames: int | None = None, chunk_frames: int | None = None,
               tile=None) -> torch.Tensor:
        """Normalised latent (B, c, T, h, w) -> video (B, 3, F, H, W), F = num_frames or 1 + (T - 1) * ts."""
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent must be (B, {self.latent_channels}, T, h, w), got {tuple(latent.shape)}"
            )
        t = latent.shape[2]
        total = 1 + (t - 1) * self.temporal_stride if num_frames is None else num_frames
        if self.num_latent_frames(total) != t:
            raise ValueError(f"num_frames={num_frames} does not fit {t} latent frames")
        self._set_tiling(tile)
        param = next(self.vae.parameters())
        shift, scale = self._norm_view(latent)
        video = self.vae.decode((latent * scale + shift).to(param)).sample  # (B, 3, F', H, W)
        if video.shape[2] < total:
            raise ValueError(f"{self.class_name} decoded {video.shape[2]} frames, fewer than {total}")
        return video[:, :, :total].to(latent.dtype)
