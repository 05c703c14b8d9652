"""`VAEConfig`: the typed description of a `CausalVAE3D` (saved next to its weights as config.json)."""

from __future__ import annotations

from dataclasses import dataclass


def _log2_exact(value: int) -> int:
    return value.bit_length() - 1


@dataclass
class VAEConfig:
    # "conv": a conv pyramid (patch_size, channel_mult, num_res_blocks per level).
    # "patch": space-time patches of (ts, ss, ss) pixels through a per-patch MLP of width base_channels, then
    # num_res_blocks causal residual blocks at latent resolution (patch_size and channel_mult unused). It
    # learns small objects and flat colours in far fewer steps than the conv pyramid.
    arch: str = "conv"
    in_channels: int = 3  # pixel channels (RGB)
    latent_channels: int = 16  # c: channels of the latent the DiT sees
    temporal_stride: int = 4  # ts: F frames -> 1 + ceil((F - 1) / ts) latent frames; one of 1, 2, 4, 8
    spatial_stride: int = 8  # ss: H -> H / ss; one of 8, 16
    patch_size: int = 2  # space-to-depth factor applied first (cheap full-resolution stage); 1, 2 or 4
    base_channels: int = 32  # width of the first (highest-resolution) level
    # one entry per level; each level after the first is reached by a x2 spatial downsample, so
    # patch_size * 2 ** (len(channel_mult) - 1) must equal spatial_stride
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1  # residual blocks per level (the decoder uses the same number)
    temporal_kernel: int = 3  # time extent of every causal conv in the residual blocks
    # arch "patch" only: width of a per-frame pixel-space refiner (three 3x3 convs, residual, last conv
    # zero-initialised) after the decoder's per-patch output; it sees across patch borders, so it can remove
    # the block seams and sharpen edges that a per-patch projection leaves. 0 = none.
    refine_channels: int = 0
    norm_eps: float = 1e-6
    logvar_min: float = -30.0
    logvar_max: float = 20.0

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if self.temporal_stride not in (1, 2, 4, 8):
            raise ValueError(f"temporal_stride must be one of 1, 2, 4, 8, got {self.temporal_stride}")
        if self.spatial_stride not in (8, 16):
            raise ValueError(f"spatial_stride must be 8 or 16, got {self.spatial_stride}")
        if self.patch_size not in (1, 2, 4):
            raise ValueError(f"patch_size must be 1, 2 or 4, got {self.patch_size}")
        self.channel_mult = tuple(self.channel_mult)
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be non-empty positive ints, got {self.channel_mult}")
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if self.arch not in ("conv", "patch"):
            raise ValueError(f"arch must be 'conv' or 'patch', got {self.arch!r}")
        downs = len(self.channel_mult) - 1
        if self.arch == "conv" and self.patch_size * 2**downs != self.spatial_stride:
            raise ValueError(
                f"patch_size * 2 ** (len(channel_mult) - 1) = {self.patch_size * 2 ** downs} must equal "
                f"spatial_stride {self.spatial_stride}; got patch_size={self.patch_size}, "
                f"channel_mult={self.channel_mult}"
            )
        if self.arch == "conv" and self.num_temporal_downs > downs:
            raise ValueError(
                f"temporal_stride {self.temporal_stride} needs {self.num_temporal_downs} downsampling levels "
                f"but channel_mult={self.channel_mult} has only {downs}"
            )
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if self.refine_channels < 0 or (self.refine_channels and self.arch != "patch"):
            raise ValueError(f"refine_channels must be >= 0, and only arch 'patch' has a refiner; got "
                             f"{self.refine_channels} with arch {self.arch!r}")
        if self.temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be >= 1, got {self.temporal_kernel}")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"logvar_min {self.logvar_min} must be < logvar_max {self.logvar_max}")

    @property
    def num_temporal_downs(self) -> int:
        return _log2_exact(self.temporal_stride)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    def temporal_down_at(self, level: int) -> bool:
        """Whether the downsample after encoder `level` also halves time (the highest-resolution ones do)."""
        return level < self.num_temporal_downs
