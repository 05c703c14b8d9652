"""A procedural video world rendered to real mp4 files, for training and evaluating the defaults.

Each clip: one filled, solid-coloured object (circle, square or upright triangle; anti-aliased edges)
on a solid background, moving left/right/up/down (at least a quarter of the frame), bouncing, or still.
Clips have mixed resolutions (multiples of 16, aspect ratio up to 2:1) and durations (1 + 4k frames).

    python -m data.synthetic --out data/world --num 2000 --seed 0 [--min-size 48 --max-size 96]

writes `OUT/train/*.mp4` + `OUT/train.jsonl` (only training combinations), `OUT/heldout/*.mp4` +
`OUT/heldout.jsonl` (only the held-out colour-shape-motion combinations of `heldout_combos()`), and
with `--prompts N` an `OUT/prompts.jsonl` of fresh evaluation prompts. Manifest rows: `path`
(relative to the manifest), `caption`, `colour`, `shape`, `motion`, `background`, `height`, `width`,
`num_frames`, `fps`, `size_px`, `heldout`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videodit.mp4 import Mp4Writer
from videodit.world import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    PALETTE,
    SHAPES,
    heldout_combos,
    make_caption,
    parse_prompt,
    training_combos,
)

__all__ = ["PALETTE", "BACKGROUND_RGB", "ClipSpec", "sample_spec", "trajectory", "render_clip",
           "render_dataset", "eval_prompts", "resolutions", "durations", "heldout_combos",
           "training_combos", "parse_prompt", "make_caption"]

SIZE_RANGE = (0.10, 0.30)  # object extent as a fraction of the shorter side
MIN_TRAVEL = 0.30  # left/right/up/down travel at least this fraction of the frame (goal: >= 0.25)
MARGIN = 1.0  # pixels kept between the object and the frame edge


def resolutions(min_size: int = 48, max_size: int = 96, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """All (H, W) with H, W multiples of 16 in [min_size, max_size] and aspect ratio <= max_aspect."""
    sizes = [s for s in range(16, max_size + 1, 16) if s >= min_size]
    if not sizes:
        raise ValueError(f"no multiple of 16 in [min_size={min_size}, max_size={max_size}]")
    return [(h, w) for h in sizes for w in sizes if max(h, w) / min(h, w) <= max_aspect]


def durations(min_frames: int = 9, max_frames: int = 33) -> list[int]:
    """All frame counts 1 + 4k in [min_frames, max_frames]."""
    frames = [f for f in range(1, max_frames + 1, 4) if f >= min_frames]
    if not frames:
        raise ValueError(f"no frame count 1+4k in [min_frames={min_frames}, max_frames={max_frames}]")
    return frames


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip. Positions are (y, x) in pixels of the object's box centre."""

    colour: str
    shape: str
    motion: str
    background: str
    height: int
    width: int
    num_frames: int
    size: float  # object extent (diameter / side / triangle base and height) in pixels
    start: tuple[float, float]  # (y, x) at frame 0; for "bouncing", the floor position
    end: tuple[float, float]  # (y, x) at the last frame
    bounces: int = 0
    amplitude: float = 0.0  # bounce height in pixels
    fps: float = 8.0

    def __post_init__(self):
        for key, allowed in (("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS),
                             ("background", BACKGROUNDS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.num_frames < 1 or self.height < 1 or self.width < 1:
            raise ValueError(f"bad clip shape {self.num_frames}x{self.height}x{self.width}")

    @property
    def attrs(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "motion": self.motion,
                "background": self.background}


def sample_spec(
    rng: np.random.Generator,
    combo: tuple[str, str, str],
    background: str,
    sizes: list[tuple[int, int]],
    frame_counts: list[int],
    fps: float = 8.0,
) -> ClipSpec:
    """Draw resolution, duration, object size and path for a (colour, shape, motion) combination."""
    colour, shape, motion = combo
    H, W = sizes[int(rng.integers(len(sizes)))]
    F = frame_counts[int(rng.integers(len(frame_counts)))]
    s = float(rng.uniform(*SIZE_RANGE)) * min(H, W)
    lo_y, hi_y = s / 2 + MARGIN, H - s / 2 - MARGIN  # valid centre range
    lo_x, hi_x = s / 2 + MARGIN, W - s / 2 - MARGIN
    y, x = float(rng.uniform(lo_y, hi_y)), float(rng.uniform(lo_x, hi_x))
    start = end = (y, x)
    bounces, amplitude = 0, 0.0
    if motion in ("left", "right"):
        travel = float(rng.uniform(MIN_TRAVEL * W, hi_x - lo_x))
        x0 = float(rng.uniform(lo_x, hi_x - travel))
        x0, x1 = (x0, x0 + travel) if motion == "right" else (x0 + travel, x0)
        start, end = (y, x0), (y, x1)
    elif motion in ("up", "down"):
        travel = float(rng.uniform(MIN_TRAVEL * H, hi_y - lo_y))
        y0 = float(rng.uniform(lo_y, hi_y - travel))
        y0, y1 = (y0, y0 + travel) if motion == "down" else (y0 + travel, y0)
        start, end = (y0, x), (y1, x)
    elif motion == "bouncing":
        floor = float(rng.uniform(hi_y - 0.1 * H, hi_y))
        amplitude = float(rng.uniform(MIN_TRAVEL * H, floor - lo_y))
        bounces = 1 if F < 17 else int(rng.integers(1, 3))
        start = end = (floor, x)
    return ClipSpec(colour, shape, motion, background, H, W, F, s, start, end, bounces, amplitude, fps)


def trajectory(spec: ClipSpec) -> np.ndarray:
    """Box-centre positions per frame -> (F, 2) float (y, x)."""
    u = np.linspace(0.0, 1.0, spec.num_frames)[:, None]  # (F, 1)
    start, end = np.asarray(spec.start), np.asarray(spec.end)
    path = start + u * (end - start)  # (F, 2)
    if spec.motion == "bouncing":
        path[:, 0] = spec.start[0] - spec.amplitude * np.abs(np.sin(np.pi * spec.bounces * u[:, 0]))
    return path


def coverage(shape: str, size: float, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased object coverage in [0, 1] -> (F, H, W) float32, from a signed distance in pixels."""
    cy = centres[:, 0, None, None].astype(np.float32)  # (F, 1, 1)
    cx = centres[:, 1, None, None].astype(np.float32)
    dy = np.arange(height, dtype=np.float32)[None, :, None] + 0.5 - cy  # (F, H, 1), pixel centres
    dx = np.arange(width, dtype=np.float32)[None, None, :] + 0.5 - cx  # (F, 1, W)
    r = size / 2
    if shape == "circle":
        sdf = np.sqrt(dy**2 + dx**2) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dy), np.abs(dx)) - r
    elif shape == "triangle":  # apex at (cy - r, cx), base from (cy + r, cx - r) to (cy + r, cx + r)
        side = (2 * np.abs(dx) - (dy + r)) / math.sqrt(5.0)
        sdf = np.maximum(dy - r, side)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return np.clip(0.5 - sdf, 0.0, 1.0)  # (F, H, W)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render a clip -> uint8 (F, H, W, 3)."""
    alpha = coverage(spec.shape, spec.size, trajectory(spec), spec.height, spec.width)[..., None]
    bg = np.asarray(BACKGROUND_RGB[spec.background], np.float32)
    fg = np.asarray(PALETTE[spec.colour], np.float32)
    frames = bg + alpha * (fg - bg)  # (F, H, W, 3)
    return np.rint(frames).astype(np.uint8)


def _row(spec: ClipSpec, path: str, caption: str, heldout: bool) -> dict:
    return {"path": path, "caption": caption, **spec.attrs, "height": spec.height, "width": spec.width,
            "num_frames": spec.num_frames, "fps": spec.fps, "size_px": round(spec.size, 3),
            "heldout": heldout}


def render_split(
    out: Path, split: str, combos: list, num: int, seed: int,
    sizes: list[tuple[int, int]], frame_counts: list[int], fps: float = 8.0, first: int = 0,
) -> list[dict]:
    """Render `num` clips numbered from `first`, cycling through `combos` (reshuffled each cycle) -> rows.

    Clip i uses its own generator seeded by (seed, split, i), so any subset can be re-rendered alone.
    """
    split_id = {"train": 0, "heldout": 1}[split]
    order_rng = np.random.default_rng([seed, split_id, 1 << 30] + ([first] if first else []))
    order: list[int] = []
    rows = []
    for i in range(first, first + num):
        if not order:
            order = list(order_rng.permutation(len(combos)))
        rng = np.random.default_rng([seed, split_id, i])
        combo = combos[order.pop()]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        spec = sample_spec(rng, combo, background, sizes, frame_counts, fps)
        rel = f"{split}/{i:06d}.mp4"
        with Mp4Writer(out / rel, fps, spec.height, spec.width) as writer:
            writer.write(render_clip(spec))
        rows.append(_row(spec, rel, make_caption(spec.attrs, rng), heldout=split == "heldout"))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


# The evaluation set of the benchmarks: the prompts that `python -m data.synthetic --seed 2 --prompts 256`
# writes (OUT/prompts.jsonl = eval_prompts(256, seed=2 + 1234)), of which the first 48 held-out and the
# first 48 others are used.
EVAL_POOL, EVAL_SEED = 256, 1236


def select_eval_prompts(rows: list[dict], num: int) -> list[dict]:
    """The evaluation's choice from prompt rows: the first num // 2 held-out, then the first others up to
    num in all (so a file with fewer held-out rows still gives num prompts where it has them)."""
    held = [r for r in rows if r["heldout"]][: num // 2]
    return held + [r for r in rows if not r["heldout"]][: num - len(held)]


def load_eval_prompts(path: str | Path | None = None, num: int = 96) -> list[dict]:
    """`num` evaluation prompts from a prompts JSONL (None: the benchmarks' set, regenerated)."""
    if path is None:
        rows = eval_prompts(EVAL_POOL, seed=EVAL_SEED)
    else:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return select_eval_prompts(rows, num)


def render_eval_clip(row: dict, seed: int, size: tuple[int, int] = (128, 128),
                     frames: int = 17) -> np.ndarray:
    """The ground truth the world's sampler draws for an evaluation prompt `row` (its colour, shape, motion,
    background) with `seed`, at `size` (H, W) and `frames` -> uint8 (F, H, W, 3)."""
    combo = (row["colour"], row["shape"], row["motion"])
    spec = sample_spec(np.random.default_rng(seed), combo, row["background"], [tuple(size)], [frames])
    return render_clip(spec)


def eval_prompts(num: int, seed: int = 1234, heldout_fraction: float = 0.5) -> list[dict]:
    """Fresh evaluation prompts -> [{"caption", colour, shape, motion, background, "heldout"}].

    A `heldout_fraction` of them use the held-out combinations (cycled), the rest training ones.
    Captions come from a generator stream that rendering never uses.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    rng = np.random.default_rng([seed, 7, 7])
    held, train = heldout_combos(), training_combos()
    num_held = round(num * heldout_fraction)
    prompts = []
    for i in range(num):
        is_held = i < num_held
        pool = held if is_held else train
        combo = pool[i % len(pool)] if is_held else pool[int(rng.integers(len(pool)))]
        attrs = dict(zip(("colour", "shape", "motion"), combo, strict=True))
        attrs["background"] = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        prompts.append({"caption": make_caption(attrs, rng), **attrs, "heldout": is_held})
    return prompts


Stratum = tuple[int, int, int, int, int]  # (min_size, max_size, min_frames, max_frames, clips)


def render_dataset(
    out: str | Path, num: int, seed: int = 0, num_heldout: int | None = None,
    min_size: int = 48, max_size: int = 96, min_frames: int = 9, max_frames: int = 33,
    fps: float = 8.0, num_prompts: int = 0, strata: list[Stratum] | None = None,
) -> dict:
    """Render the training and held-out splits (and optional eval prompts) under `out` -> summary dict.

    `strata`: several (min_size, max_size, min_frames, max_frames, clips) ranges rendered one after the
    other into the same splits (e.g. many small clips, fewer long or 720p ones); `num` and the size and
    frame ranges are then ignored, and each stratum gets held-out clips in proportion."""
    if strata is None:
        strata = [(min_size, max_size, min_frames, max_frames, num)]
    elif not strata:
        raise ValueError("strata must name at least one (min_size, max_size, min_frames, max_frames, clips)")
    if any(n < 0 for *_, n in strata):
        raise ValueError(f"clip counts must be >= 0, got {[n for *_, n in strata]}")
    num = sum(n for *_, n in strata)
    num_heldout = max(1, num // 10) if num_heldout is None else num_heldout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, held, all_sizes, all_frames = [], [], [], []
    for k, (lo, hi, f_lo, f_hi, n) in enumerate(strata):
        sizes, frame_counts = resolutions(lo, hi), durations(f_lo, f_hi)
        all_sizes += [s for s in sizes if s not in all_sizes]
        all_frames += [f for f in frame_counts if f not in all_frames]
        n_held = (num_heldout * sum(s[-1] for s in strata[: k + 1]) // max(num, 1)) - len(held)
        train += render_split(out, "train", training_combos(), n, seed, sizes, frame_counts, fps, len(train))
        held += render_split(out, "heldout", heldout_combos(), n_held, seed, sizes, frame_counts, fps,
                             len(held))
    seconds = time.perf_counter() - t0
    num_heldout = len(held)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", held)
    if num_prompts:
        write_jsonl(out / "prompts.jsonl", eval_prompts(num_prompts, seed=seed + 1234))
    total = num + num_heldout
    return {"out": str(out), "train": num, "heldout": num_heldout, "prompts": num_prompts,
            "seconds": round(seconds, 2), "clips_per_s": round(total / max(seconds, 1e-9), 1),
            "resolutions": len(all_sizes), "durations": sorted(all_frames)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, default=None, help="training clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-heldout", type=int, default=None, help="held-out clips (default num // 10)")
    p.add_argument("--min-size", type=int, default=48, help="smallest side in pixels")
    p.add_argument("--max-size", type=int, default=96, help="largest side in pixels")
    p.add_argument("--min-frames", type=int, default=9)
    p.add_argument("--max-frames", type=int, default=33)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--prompts", type=int, default=0, help="also write N evaluation prompts")
    p.add_argument("--stratum", type=int, nargs=5, action="append", default=None,
                   metavar=("MIN_SIZE", "MAX_SIZE", "MIN_FRAMES", "MAX_FRAMES", "CLIPS"),
                   help="render CLIPS clips of these ranges; repeat for a mix (replaces --num and ranges)")
    a = p.parse_args(argv)
    if a.num is None and not a.stratum:
        p.error("give --num or at least one --stratum")
    summary = render_dataset(a.out, a.num or 0, a.seed, a.num_heldout, a.min_size, a.max_size,
                             a.min_frames, a.max_frames, a.fps, a.prompts,
                             [tuple(s) for s in a.stratum] if a.stratum else None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

