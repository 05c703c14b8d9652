"""3D rotary position embedding split across the (t, h, w) axes of a head.

The head dim `dh` is split into three even chunks: h and w get `2 * (dh // 6)` dims each, t gets the rest
(Wan-style). Each chunk rotates pairs of channels by `position * theta ** (-2j / chunk)`.

Positions come from `PackedBatch.pos`: each token's integer (t, h, w) on its own sample's grid, so a
sample's rotation never depends on where it sits in the packed row. In "fractional" mode (NaViT) the
position on an axis is rescaled to a reference grid: `pos * ref / grid_size`, so a 16x16 and a 32x32
latent span the same angles and one model serves many resolutions. A reference of 0 keeps that axis integer
(the default keeps time integer: frame rate, not duration, sets temporal spacing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head given to (t, h, w)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head dim >= 6, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def fractional_positions(
    pos: torch.Tensor, sample_id: torch.Tensor, grids: Sequence[tuple[int, int, int]], ref_grid: Sequence[int]
) -> torch.Tensor:
    """pos `(N, 3)` integer -> `(N, 3)` scaled to `ref_grid` per axis (a ref of 0 leaves the axis as is)."""
    grid = torch.tensor(grids, dtype=torch.float32, device=pos.device)  # (S, 3)
    ref = torch.tensor(ref_grid, dtype=torch.float32, device=pos.device)  # (3,)
    scale = torch.where(ref > 0, ref / grid, torch.ones_like(grid))  # (S, 3)
    return pos.float() * scale[sample_id]  # (N, 3)


def rope_cos_sin(
    pos: torch.Tensor, head_dim: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """pos `(N, 3)` -> cos, sin `(N, dh/2)` fp32, one angle per rotated channel pair."""
    angles = []
    for axis, dim in enumerate(rope_dims(head_dim)):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)  # (dim/2,)
        angles.append(pos[:, axis, None].double() * freqs[None])  # (N, dim/2)
    angle = torch.cat(angles, dim=-1).float()  # (N, dh/2)
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `(N, nh, dh)` rotated pairwise (channels 2j, 2j+1) by cos/sin `(N, dh/2)`; math in fp32."""
    xf = x.float().unflatten(-1, (-1, 2))  # (N, nh, dh/2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]  # (N, nh, dh/2)
    c, s = cos[:, None], sin[:, None]  # (N, 1, dh/2)
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)  # (N, nh, dh/2, 2)
    return out.flatten(-2).to(x.dtype)  # (N, nh, dh)
