"""Spacetime patches: a latent `(C, T, H, W)` <-> tubelet tokens `(L, C*pt*ph*pw)` on a grid `(T', H', W')`.

Axes that are not a multiple of the tubelet are zero-padded at their tail, so the grid is
`ceil(T/pt), ceil(H/ph), ceil(W/pw)`. `spacetime_unpatchify` is the exact inverse; pass the original
latent `size=(T, H, W)` to crop the padding back (without it the padded shape comes back).

`causal=True` aligns the temporal groups to the causal VAE: pt - 1 zero frames go in front, so latent
frame 0 (the VAE encodes the first video frame alone: an image is exactly that frame) has tokens of its
own and frames 1.. group in pt's: `[pad, 0], [1, 2], [3, 4], ...` for pt = 2. The time grid is then
`1 + ceil((T - 1) / pt)`. A clean first frame (image-to-video) can be given as whole tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

Patch = tuple[int, int, int]
Grid = tuple[int, int, int]


def _check_patch(patch: Patch) -> Patch:
    if len(patch) != 3 or any(int(p) < 1 for p in patch):
        raise ValueError(f"patch must be three positive integers (pt, ph, pw), got {patch!r}")
    return tuple(int(p) for p in patch)  # type: ignore[return-value]


def lead_frames(patch: Patch, causal: bool) -> int:
    """Zero latent frames put in front of frame 0: pt - 1 for a causal tubelet, else 0."""
    return patch[0] - 1 if causal else 0


def group_ends(num_frames: int, patch: Patch, causal: bool = False) -> list[int]:
    """Latent frame counts k < num_frames at which a temporal token group ends: the prefixes of a latent
    that are whole tokens (what conditioning frames may cover)."""
    pt, lead = patch[0], lead_frames(patch, causal)
    return [k for k in range(1, num_frames) if (k + lead) % pt == 0]


def patch_grid(size: tuple[int, int, int], patch: Patch, causal: bool = False) -> Grid:
    """Token grid `(T', H', W')` of a latent of spatial-temporal `size=(T, H, W)` (tails padded)."""
    patch = _check_patch(patch)
    T, H, W = size
    padded = (T + lead_frames(patch, causal), H, W)
    return tuple(math.ceil(s / p) for s, p in zip(padded, patch))  # type: ignore[return-value]


def spacetime_patchify(
    latent: torch.Tensor, patch: Patch, causal: bool = False
) -> tuple[torch.Tensor, Grid]:
    """latent `(C, T, H, W)` -> tokens `(L, C*pt*ph*pw)` in (t, h, w) raster order, grid `(T', H', W')`."""
    patch = _check_patch(patch)
    if latent.dim() != 4:
        raise ValueError(f"latent must be (C, T, H, W), got shape {tuple(latent.shape)}")
    pt, ph, pw = patch
    _, T, H, W = latent.shape
    grid = patch_grid((T, H, W), patch, causal)
    lead = lead_frames(patch, causal)
    # F.pad order: last axis first; time gets `lead` zero frames in front and the rest at its tail
    pad = [0, grid[2] * pw - W, 0, grid[1] * ph - H, lead, grid[0] * pt - T - lead]
    if any(pad):
        latent = F.pad(latent, pad)  # (C, T'pt, H'ph, W'pw)
    tokens = rearrange(latent, "c (t pt) (h ph) (w pw) -> (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)
    return tokens, grid


def spacetime_unpatchify(
    tokens: torch.Tensor,
    grid: Grid,
    patch: Patch,
    channels: int,
    size: tuple[int, int, int] | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """tokens `(L, C*pt*ph*pw)` -> latent `(C, T'pt - lead, H'ph, W'pw)` (the causal lead frames dropped),
    cropped to `size=(T, H, W)` if given."""
    patch = _check_patch(patch)
    pt, ph, pw = patch
    t, h, w = grid
    if tokens.dim() != 2 or tokens.shape[0] != t * h * w or tokens.shape[1] != channels * pt * ph * pw:
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} do not match grid {tuple(grid)}, patch {patch} and "
            f"{channels} channels (expected ({t * h * w}, {channels * pt * ph * pw}))"
        )
    latent = rearrange(
        tokens,
        "(t h w) (c pt ph pw) -> c (t pt) (h ph) (w pw)",
        t=t,
        h=h,
        w=w,
        c=channels,
        pt=pt,
        ph=ph,
        pw=pw,
    )  # (C, T'pt, H'ph, W'pw)
    latent = latent[:, lead_frames(patch, causal) :]  # (C, T'pt - lead, H'ph, W'pw)
    if size is not None:
        T, H, W = size
        if T > latent.shape[1] or H > h * ph or W > w * pw:
            raise ValueError(
                f"size {tuple(size)} is larger than the patched extent {tuple(latent.shape[1:])}"
            )
        latent = latent[:, :T, :H, :W]
    return latent
