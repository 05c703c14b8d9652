"""Causal 3D building blocks. Every module that looks at the past takes a cache and returns the next one.

Cache convention: `cache=None` means "start of the stream" (the first frame is replicated into the past);
after a call, feed the returned cache with the next temporal chunk and the result equals running the
whole clip in one pass. Caches are plain tensors / dicts of tensors; modules keep no state between calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Cache = dict | torch.Tensor | None


class CausalConv3d(nn.Module):
    """Conv3d that pads only on the past side in time (first frame replicated), zero-pads in space.

    `forward(x (B, C_in, F, H, W), cache) -> (y (B, C_out, F', H', W'), cache')`. The cache holds the input
    frames not yet consumed (for stride 1: the last `kernel_t - 1` frames), so any chunking of the input
    gives the same frames as one pass; a chunk too short to complete an output frame yields F' = 0.
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (3, 3, 3),
                 stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        kt, kh, kw = kernel
        self.kernel_t, self.stride_t = kt, stride[0]
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple:
        """x (B, C_in, F, H, W) -> (y (B, C_out, F', H', W'), cache')."""
        if cache is None:
            if x.shape[2] == 0:
                raise ValueError("the first chunk of a stream must hold at least one frame")
            past = x[:, :, :1].expand(-1, -1, self.kernel_t - 1, -1, -1)  # (B, C, kt-1, H, W)
        else:
            past = cache
        buf = torch.cat([past, x], dim=2)  # (B, C, P + F, H, W)
        length = buf.shape[2]
        n_out = (length - self.kernel_t) // self.stride_t + 1 if length >= self.kernel_t else 0
        consumed = n_out * self.stride_t
        new_cache = buf[:, :, consumed:].clone() if consumed > 0 else buf
        if n_out == 0:
            h, w = self._spatial_out(x.shape[3], x.shape[4])
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0, h, w), new_cache
        y = self._conv(buf[:, :, : consumed + self.kernel_t - self.stride_t])  # (B, C_out, n_out, H', W')
        return y, new_cache

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        # torch's CPU backend heuristic sends small-volume conv3d inputs (short temporal chunks) to the
        # unfold-based slow_conv3d, ~4x slower than oneDNN; call oneDNN directly for fp32 CPU tensors.
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            c = self.conv
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), c.weight, c.bias, list(c.padding),
                                                     list(c.stride), list(c.dilation), c.groups)
        return self.conv(x)

    def _spatial_out(self, h: int, w: int) -> tuple[int, int]:
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = self.conv.kernel_size, self.conv.stride, self.conv.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (frame, pixel): local in time and space, so chunks stay exact."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)  # / (B, 1, F, H, W) rms
        return x * self.weight.view(1, -1, 1, 1, 1)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 if widths differ) skip. Cache: {"c1", "c2"}."""

    def __init__(self, c_in: int, c_out: int, kernel_t: int = 3, eps: float = 1e-6):
        super().__init__()
        self.norm1 = ChannelRMSNorm(c_in, eps)
        self.conv1 = CausalConv3d(c_in, c_out, (kernel_t, 3, 3))
        self.norm2 = ChannelRMSNorm(c_out, eps)
        self.conv2 = CausalConv3d(c_out, c_out, (kernel_t, 3, 3))
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        cache = cache or {}
        h, c1 = self.conv1(F.silu(self.norm1(x)), cache.get("c1"))
        h, c2 = self.conv2(F.silu(self.norm2(h)), cache.get("c2"))
        return self.skip(x) + h, {"c1": c1, "c2": c2}


class Downsample3d(nn.Module):
    """x2 spatial (and optionally x2 causal temporal) downsampling by a strided causal conv.

    Time: 1 + 2m frames -> 1 + m (the first frame alone, then pairs), streamable through the cache.
    """

    def __init__(self, c_in: int, c_out: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        kt, st = (3, 2) if temporal else (1, 1)
        self.conv = CausalConv3d(c_in, c_out, (kt, 3, 3), stride=(st, 2, 2))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None):
        return self.conv(x, cache)


class Upsample3d(nn.Module):
    """x2 spatial (optionally x2 temporal) upsampling: causal conv to c * r_t * 4 channels, depth-to-space.

    Time: 1 + m frames -> 1 + 2m; every latent frame becomes two, except the first frame of the stream
    (cache None), which becomes one. Cache: {"conv": ..., "started": True}.
    """

    def __init__(self, c_in: int, c_out: int, temporal: bool, kernel_t: int = 3):
        super().__init__()
        self.rt = 2 if temporal else 1
        self.conv = CausalConv3d(c_in, c_out * self.rt * 4, (kernel_t, 3, 3))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> tuple[torch.Tensor, dict]:
        first = cache is None
        y, conv_cache = self.conv(x, None if first else cache["conv"])
        y = rearrange(y, "b (c rt r1 r2) t h w -> b c (t rt) (h r1) (w r2)", rt=self.rt, r1=2, r2=2)
        if first and self.rt == 2:
            y = y[:, :, 1:]  # the stream's first frame is upsampled to one frame only
        return y, {"conv": conv_cache}
