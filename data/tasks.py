"""Conditioning tasks for training: which latent frames of a sample are given clean.

Every task trains in the same packed row as plain text-to-video; a task only marks latent frames as
conditioning, which the flow loss keeps clean, gives t = 0 and leaves out of the loss
(`videodit.flow.flow_loss(cond_frames=...)`):

    t2v      nothing given
    i2v      latent frame 0: the causal VAE encodes the first video frame alone, so it is exactly the
             latent of the image a user gives
    extend   the first k latent frames (1 + (k - 1) * ts video frames), k whole token groups, k < T

A sample with one latent frame (an image) is always t2v. The kept prefix ends on a token-group boundary,
so conditioning never shares a token with a frame to generate.
"""

from __future__ import annotations

import random

import torch

from videodit.patchify import group_ends

TASKS = ("t2v", "i2v", "extend")


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    """A task mix {task: weight}: known tasks, weights >= 0, at least one positive."""
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in data.tasks; known: {list(TASKS)}")
    if any(w < 0 for w in mix.values()) or not any(w > 0 for w in mix.values()):
        raise ValueError(f"data.tasks weights must be >= 0 with at least one > 0, got {mix}")
    return mix


def conditioning_frames(task: str, num_frames: int, patch: tuple[int, int, int], causal: bool,
                        rng: random.Random) -> torch.Tensor:
    """Bool `(T,)`: the latent frames `task` gives clean for a sample of `num_frames` latent frames."""
    cond = torch.zeros(num_frames, dtype=torch.bool)
    ends = group_ends(num_frames, patch, causal)
    if task == "t2v" or not ends:
        return cond
    if task == "i2v":
        if ends[0] != 1:  # frame 0 shares a token with frame 1: no image-to-video with this tubelet
            return cond
        cond[0] = True
    elif task == "extend":
        cond[: rng.choice(ends)] = True
    else:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    return cond


def sample_tasks(mix: dict[str, float], sizes: list[int], patch: tuple[int, int, int], causal: bool,
                 rng: random.Random) -> tuple[list[str], list[torch.Tensor]]:
    """Draw a task for each sample (latent frame counts `sizes`) from `mix` -> (tasks, cond frames)."""
    names = [k for k, w in mix.items() if w > 0]
    weights = [mix[k] for k in names]
    tasks, conds = [], []
    for T in sizes:
        task = rng.choices(names, weights)[0]
        cond = conditioning_frames(task, T, patch, causal, rng)
        tasks.append(task if cond.any() else "t2v")
        conds.append(cond)
    return tasks, conds
