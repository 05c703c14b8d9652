"""Conditioning tasks for training: which latent frames of a sample are given clean.

Every task trains in the same packed row as plain text-to-video; a task only marks latent frames as
conditioning, which the flow loss keeps clean, gives t = 0 and leaves out of the loss
(`videodit.flow.flow_loss(cond_frames=...)`):

    t2v      nothing given
    i2v      latent frame 0: the causal VAE encodes the first video frame alone, so it is exactly the
             latent of the image a user gives
    extend   the first k latent frames (1 + (k - 1) * ts video frames), k whole token groups, k < T
    first_last  latent frame 0 and the clip's last frame: the last video frame encoded alone (the
             latent cache stores it, `python -m data.precache --last-frame`) in a token group of its own
             after the clip (`videodit.last_frame`), so the sample grows by pt latent frames

A sample with one latent frame (an image) is always t2v, and so is a sample a task cannot apply to (no
causal tubelet for i2v, no stored last frame, a clip that does not end on a token group). The kept prefix
ends on a token-group boundary, so conditioning never shares a token with a frame to generate.
"""

from __future__ import annotations

import random

import torch

from videodit.last_frame import append_last_frame, last_frame_mask, takes_last_frame
from videodit.patchify import group_ends

TASKS = ("t2v", "i2v", "extend", "first_last")


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    """A task mix {task: weight}: known tasks, weights >= 0, at least one positive."""
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in data.tasks; known: {list(TASKS)}")
    if any(w < 0 for w in mix.values()) or not any(w > 0 for w in mix.values()):
        raise ValueError(f"data.tasks weights must be >= 0 with at least one > 0, got {mix}")
    return mix


def conditioning_frames(task: str, num_frames: int, patch: tuple[int, int, int], causal: bool,
                        rng: random.Random, has_last: bool = False) -> torch.Tensor:
    """Bool: the latent frames `task` gives clean for a sample of `num_frames` latent frames, `(T,)`, or
    `(T + pt,)` for first_last (the last frame's group appended, see `videodit.last_frame`); all False
    when the task cannot apply. `has_last`: the sample's last frame is available."""
    cond = torch.zeros(num_frames, dtype=torch.bool)
    ends = group_ends(num_frames, patch, causal)
    if task == "t2v" or not ends:
        return cond
    if task in ("i2v", "first_last"):
        if ends[0] != 1:  # frame 0 shares a token with frame 1: no image-to-video with this tubelet
            return cond
        if task == "first_last":
            if not (has_last and takes_last_frame(num_frames, patch, causal)):
                return cond
            cond = last_frame_mask(num_frames, patch)
        cond[0] = True
    elif task == "extend":
        cond[: rng.choice(ends)] = True
    else:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    return cond


def sample_tasks(mix: dict[str, float], sizes: list[int], patch: tuple[int, int, int], causal: bool,
                 rng: random.Random,
                 has_last: list[bool] | None = None) -> tuple[list[str], list[torch.Tensor]]:
    """Draw a task for each sample (latent frame counts `sizes`; `has_last`: whether each has its last
    frame) from `mix` -> (tasks, cond frames); a sample a drawn task cannot apply to is t2v."""
    names = [k for k, w in mix.items() if w > 0]
    weights = [mix[k] for k in names]
    tasks, conds = [], []
    for i, T in enumerate(sizes):
        task = rng.choices(names, weights)[0]
        cond = conditioning_frames(task, T, patch, causal, rng, bool(has_last and has_last[i]))
        tasks.append(task if cond.any() else "t2v")
        conds.append(cond)
    return tasks, conds


def condition_row(mix: dict[str, float], latents: list[torch.Tensor], lasts: list[torch.Tensor | None],
                  patch: tuple[int, int, int], causal: bool,
                  rng: random.Random) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    """Draw each sample's task -> (tasks, latents, cond frames): a first_last sample's latent gets its last
    frame's group appended (`lasts[i]`, `(C, 1, h, w)`, or None where the cache has none)."""
    tasks, conds = sample_tasks(mix, [z.shape[1] for z in latents], patch, causal, rng,
                                [last is not None for last in lasts])
    latents = [append_last_frame(z, last, patch, causal) if task == "first_last" else z
               for z, last, task in zip(latents, lasts, tasks)]
    return tasks, latents, conds
