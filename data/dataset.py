"""Iterable dataset of decoded clips at their NaViT-sampled native shape.

Yields `{"video": (3, F, H, W) float in [-1, 1], "caption": str, "path": str, "index": int}`.
Every random choice of a clip (frames, resolution) is drawn from an RNG seeded by (seed, epoch, index),
so the same clip comes out the same whichever rank, worker or resume point reads it.
A file that cannot be read (missing, empty, truncated, garbled, not a video) is skipped with a warning
naming it and counted in `stats["skipped"]` (once per file and process); it never stops the run.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data.manifest import ClipEntry, read_manifest
from data.sampling import ClipPlan, SamplingConfig, plan_clip, token_count
from videodit.video_reader import VideoDecodeError, decode_frames, frame_indices, probe_video

log = logging.getLogger(__name__)


def clip_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG for one clip's choices; depends only on (seed, epoch, index)."""
    return random.Random(f"videodit-clip-{seed}-{epoch}-{index}")


def epoch_order(num: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """Permutation of range(num) for an epoch (identity if not shuffling)."""
    order = list(range(num))
    if shuffle:
        random.Random(f"videodit-order-{seed}-{epoch}").shuffle(order)
    return order


def plan_entry(entry: ClipEntry, cfg: SamplingConfig, rng: random.Random) -> ClipPlan:
    """Probe the file and choose frames + resolution inside the entry's [start, end] window."""
    info = probe_video(entry.path)
    window = frame_indices(info, start=entry.start, end=entry.end, fps=entry.fps)
    if not window:
        raise VideoDecodeError(f"{entry.path}: no frames between start={entry.start} and end={entry.end} s")
    plan = plan_clip(len(window), entry.fps or info.fps, info.height, info.width, cfg, rng)
    return ClipPlan(indices=tuple(window[i] for i in plan.indices), height=plan.height, width=plan.width)


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1]."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)  # (3, F, H, W)
    return video.float().div_(127.5).sub_(1.0)


def load_clip(path: str, plan: ClipPlan) -> torch.Tensor:
    """Decode the planned frames at the planned size -> (3, F, H, W) float in [-1, 1]."""
    frames = decode_frames(path, list(plan.indices), size=(plan.height, plan.width))  # (F, H, W, 3)
    return frames_to_video(frames)


def skip_warning(path: str, err: Exception, stats: dict) -> None:
    stats["skipped"] = stats.get("skipped", 0) + 1
    log.warning("skipping unreadable clip %s: %s", path, err)


class VideoDataset(IterableDataset):
    """Decoded clips of a manifest, in a seeded order per epoch, split across ranks and workers.

    entries: a manifest path (CSV, JSONL, folder) or a list of ClipEntry.
    rank/world_size: this process's share is order[rank::world_size] (then split across DataLoader
    workers the same way). `set_epoch(e)` changes the order and the per-clip random choices.
    """

    def __init__(
        self,
        entries: str | Path | list[ClipEntry],
        cfg: SamplingConfig | None = None,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.entries = read_manifest(entries) if isinstance(entries, (str, Path)) else list(entries)
        self.cfg = cfg or SamplingConfig()
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.rank, self.world_size = rank, world_size
        self.stats = {"skipped": 0, "yielded": 0}
        self._plans: dict[int, ClipPlan] = {}  # this epoch's plans of clips measured but not yet loaded
        self.bad: set[int] = set()  # rows found unreadable: warned about and counted once, then skipped

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._plans.clear()
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.entries), self.world_size))

    def indices(self) -> list[int]:
        """Manifest indices this rank (and DataLoader worker) reads this epoch, in order."""
        order = epoch_order(len(self.entries), self.seed, self.epoch, self.shuffle)
        mine = order[self.rank :: self.world_size]
        worker = get_worker_info()
        if worker is not None:
            mine = mine[worker.id :: worker.num_workers]
        return mine

    def plan(self, index: int) -> ClipPlan:
        """This epoch's frames + resolution for manifest row `index` (raises VideoDecodeError)."""
        if index not in self._plans:
            entry = self.entries[index]
            self._plans[index] = plan_entry(entry, self.cfg, clip_rng(self.seed, self.epoch, index))
        return self._plans[index]

    def _skip(self, index: int, err: Exception) -> None:
        self.bad.add(index)
        skip_warning(self.entries[index].path, err, self.stats)

    def token_length(self, index: int) -> int | None:
        """Patch tokens of row `index` this epoch (probe only, no decoding); None if unreadable."""
        if index in self.bad:
            return None
        try:
            plan = self.plan(index)
        except VideoDecodeError as e:
            self._skip(index, e)
            return None
        return token_count(len(plan.indices), plan.height, plan.width, self.cfg)

    def load(self, index: int) -> dict | None:
        """The sample for manifest row `index` this epoch, or None (counted, warned) if unreadable."""
        entry = self.entries[index]
        if index in self.bad:
            return None
        try:
            plan = self.plan(index)
            self._plans.pop(index, None)
            video = load_clip(entry.path, plan)
        except VideoDecodeError as e:
            self._skip(index, e)
            return None
        self.stats["yielded"] += 1
        return {"video": video, "caption": entry.caption, "path": entry.path, "index": index}

    def __iter__(self):
        for index in self.indices():
            sample = self.load(index)
            if sample is not None:
                yield sample
