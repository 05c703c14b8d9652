"""NaViT data sampling: pick each clip's resolution and frames so its token count fits a budget.

Pure functions. Every clip keeps its aspect ratio (up to rounding to the spatial unit); its resolution
is chosen so the latent token count lands at a random target within `[min_tokens, max_tokens]`; frames
are taken at a stride close to `target_fps` and their count has the form `1 + k * ts`, which a causal
VAE with temporal stride `ts` maps to exactly `1 + k` latent frames.

Token count of a clip of F frames at H x W (VAE strides ts, ss; patch (pt, ph, pw)):
    T = 1 + ceil((F - 1) / ts);  tokens = ceil(T / pt) * (H / (ss*ph)) * (W / (ss*pw))
(a causal tubelet has 1 + ceil((T - 1) / pt) temporal groups instead of ceil(T / pt)).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from videodit.patchify import lead_frames, patch_grid


@dataclass
class SamplingConfig:
    """How clips are cut and resized; strides and patch must match the VAE and the DiT."""

    temporal_stride: int = 4  # VAE ts
    spatial_stride: int = 8  # VAE ss
    patch: tuple[int, int, int] = (1, 2, 2)  # DiT (pt, ph, pw)
    causal: bool = False  # DiT causal tubelet: latent frame 0 has tokens of its own (videodit.patchify)
    min_tokens: int = 64  # per-clip latent tokens: lower bound of the random target
    max_tokens: int = 1024  # upper bound; never exceeded (the loader's row budget must be >= this)
    target_fps: float = 8.0  # frame rate the model sees; 0 keeps the file's rate
    min_frames: int = 1
    max_frames: int = 33
    allow_upscale: bool = False  # never enlarge a clip beyond its native size unless set

    def __post_init__(self):
        if self.temporal_stride not in (1, 2, 4, 8):
            raise ValueError(f"temporal_stride must be 1, 2, 4 or 8, got {self.temporal_stride}")
        if self.spatial_stride < 1:
            raise ValueError(f"spatial_stride must be >= 1, got {self.spatial_stride}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be 3 positive ints (pt, ph, pw), got {self.patch}")
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if self.target_fps < 0:
            raise ValueError(f"target_fps must be >= 0 (0 = native), got {self.target_fps}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")

    @property
    def unit_h(self) -> int:
        """Pixel rows per token row: VAE spatial stride x patch height."""
        return self.spatial_stride * self.patch[1]

    @property
    def unit_w(self) -> int:
        return self.spatial_stride * self.patch[2]


@dataclass(frozen=True)
class ClipPlan:
    """Which frames to read (0-based indices into the file) and the (H, W) to resize them to."""

    indices: tuple[int, ...]
    height: int
    width: int


def latent_frames(num_frames: int, temporal_stride: int) -> int:
    """Causal VAE: F frames -> 1 + ceil((F - 1) / ts) latent frames."""
    return 1 + math.ceil((num_frames - 1) / temporal_stride)


def token_count(num_frames: int, height: int, width: int, cfg: SamplingConfig) -> int:
    """Patch tokens of a clip of `num_frames` x `height` x `width` pixels."""
    T = latent_frames(num_frames, cfg.temporal_stride)
    h = math.ceil(height / cfg.spatial_stride)
    w = math.ceil(width / cfg.spatial_stride)
    return latent_token_count((T, h, w), cfg.patch, cfg.causal)


def latent_token_count(latent_shape: tuple[int, ...], patch: tuple[int, int, int],
                       causal: bool = False) -> int:
    """Patch tokens of a latent (c, T, h, w) (or (T, h, w))."""
    t, h, w = patch_grid(tuple(latent_shape[-3:]), tuple(patch), causal)
    return t * h * w


def frame_stride(src_fps: float, target_fps: float) -> int:
    """Integer stride that brings `src_fps` closest to `target_fps` (1 when target is 0 or higher)."""
    if target_fps <= 0 or src_fps <= target_fps:
        return 1
    return max(1, round(src_fps / target_fps))


def choose_frames(
    num_frames: int, src_fps: float, cfg: SamplingConfig, rng: random.Random, max_count: int | None = None
) -> list[int]:
    """Frame indices: stride for `target_fps`, count 1 + k*ts within [min_frames, max_frames], random start.

    Short clips get the longest count they hold; a clip shorter than min_frames gets what it has
    (still of the form 1 + k*ts). Returns indices into the file's frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    ts = cfg.temporal_stride
    stride = frame_stride(src_fps, cfg.target_fps)
    if num_frames < 1 + stride * ts and stride > 1:  # too short for the stride: take consecutive frames
        stride = max(1, (num_frames - 1) // ts) if num_frames > ts else 1
    avail = 1 + (num_frames - 1) // stride  # frames reachable at this stride
    hi = min(avail, cfg.max_frames, max_count or cfg.max_frames)
    k_hi = (hi - 1) // ts
    k_lo = min(k_hi, max(0, math.ceil((cfg.min_frames - 1) / ts)))
    k = rng.randint(k_lo, k_hi)
    count = 1 + k * ts
    span = (count - 1) * stride + 1
    start = rng.randint(0, num_frames - span)
    return list(range(start, start + span, stride))


def choose_resolution(
    height: int, width: int, spatial_budget: float, cfg: SamplingConfig
) -> tuple[int, int]:
    """(H, W) with the source aspect ratio, multiples of the spatial unit, with about `spatial_budget`
    tokens per latent frame group (never more), never larger than the source unless allow_upscale."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    uh, uw = cfg.unit_h, cfg.unit_w
    budget = max(1.0, spatial_budget)
    scale = math.sqrt(budget * uh * uw / (height * width))
    if not cfg.allow_upscale:
        scale = min(scale, 1.0)
    rows = max(1, math.floor(height * scale / uh))
    cols = max(1, math.floor(width * scale / uw))
    while rows * cols > budget and (rows > 1 or cols > 1):  # extreme aspect: trim the long side
        if cols >= rows:
            cols -= 1
        else:
            rows -= 1
    return rows * uh, cols * uw


def plan_clip(num_frames: int, src_fps: float, height: int, width: int, cfg: SamplingConfig,
              rng: random.Random) -> ClipPlan:
    """Frames and resolution for one clip; its token count is at most cfg.max_tokens."""
    pt = cfg.patch[0]
    max_groups = cfg.max_tokens  # at least one spatial token per latent frame group
    max_count = 1 + (max_groups * pt - lead_frames(cfg.patch, cfg.causal) - 1) * cfg.temporal_stride
    indices = choose_frames(num_frames, src_fps, cfg, rng, max_count=max_count)
    groups = patch_grid((latent_frames(len(indices), cfg.temporal_stride), 1, 1), cfg.patch, cfg.causal)[0]
    target = rng.uniform(cfg.min_tokens, cfg.max_tokens)
    spatial = min(target, cfg.max_tokens) / groups
    H, W = choose_resolution(height, width, spatial, cfg)
    plan = ClipPlan(indices=tuple(indices), height=H, width=W)
    assert token_count(len(indices), H, W, cfg) <= cfg.max_tokens, plan
    return plan
