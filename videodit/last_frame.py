"""A last frame given as an image (first-and-last-frame conditioning): how it becomes tokens.

A clip's last latent frame has no image of its own: it covers `ts` video frames and was encoded with the
causal context of every frame before it. A single image encodes, like a first frame, as a 1-frame latent
`(C, 1, h, w)`. So the last image is encoded exactly that way, alone, and goes into a token group of its
own after the video's frames: `pt - 1` zero frames, then the image's latent. For pt = 2 with a causal
tubelet the latent frames are

    [pad, 0] [1, 2] ... [T-2, T-1] [0-frame, last image]

The trailing group is conditioning, like a given first frame: clean in x_t, t = 0, out of the loss. It is
never decoded; the model learns from data that the video's final frames show what that group holds.
Training (`data.tasks` first_last, from a latent cache built with `python -m data.precache --last-frame`,
which stores each clip's last frame encoded alone) and sampling (`generate.py --last-image`) build it
with the same two functions below.

The video's own frames must end on a token group (T + lead a multiple of pt; every clip of 1 + 8k frames
does with ts = 4, pt = 2), so the reference never shares a token with a frame to generate.
"""

from __future__ import annotations

import torch

from videodit.patchify import Patch, lead_frames


def takes_last_frame(num_frames: int, patch: Patch, causal: bool) -> bool:
    """Whether a latent of `num_frames` frames ends on a token group, so a last-frame group can follow."""
    return num_frames > 1 and (num_frames + lead_frames(patch, causal)) % patch[0] == 0


def append_last_frame(latent: torch.Tensor, last: torch.Tensor, patch: Patch, causal: bool) -> torch.Tensor:
    """latent `(C, T, h, w)` + the last image's 1-frame latent `(C, 1, h, w)` -> `(C, T + pt, h, w)`: the
    video's frames, then pt - 1 zero frames and the image. ValueError when T does not end on a group."""
    if last.dim() != 4 or last.shape[1] != 1 or last.shape[0] != latent.shape[0] \
            or tuple(last.shape[2:]) != tuple(latent.shape[2:]):
        raise ValueError(f"the last frame's latent {tuple(last.shape)} must be (C, 1, h, w) of the video "
                         f"latent {tuple(latent.shape)}")
    T = latent.shape[1]
    if not takes_last_frame(T, patch, causal):
        raise ValueError(f"a latent of {T} frames does not end on a token group of patch {tuple(patch)} "
                         f"(causal tubelet {causal}): a last frame cannot follow it")
    pad = latent.new_zeros((latent.shape[0], patch[0] - 1, *latent.shape[2:]))  # (C, pt - 1, h, w)
    return torch.cat([latent, pad, last.to(latent)], dim=1)  # (C, T + pt, h, w)


def last_frame_mask(num_frames: int, patch: Patch) -> torch.Tensor:
    """Bool `(T + pt,)`: the trailing group `append_last_frame` adds to a latent of `num_frames` frames."""
    mask = torch.zeros(num_frames + patch[0], dtype=torch.bool)
    mask[num_frames:] = True
    return mask
