import random

import pytest
import torch

from data.tasks import check_mix, condition_row, conditioning_frames, sample_tasks
from videodit.patchify import group_ends


def test_prefixes_end_on_token_groups():
    assert group_ends(5, (2, 2, 2), causal=True) == [1, 3]  # [pad 0] [1 2] [3 4]
    assert group_ends(5, (2, 2, 2), causal=False) == [2, 4]  # [0 1] [2 3] [4 pad]
    assert group_ends(4, (1, 2, 2), causal=False) == [1, 2, 3]
    assert group_ends(1, (2, 2, 2), causal=True) == []


def test_each_task_marks_its_frames():
    rng = random.Random(0)
    assert not conditioning_frames("t2v", 5, (2, 4, 4), True, rng).any()
    assert conditioning_frames("i2v", 5, (2, 4, 4), True, rng).tolist() == [True, False, False, False, False]
    for _ in range(20):
        cond = conditioning_frames("extend", 9, (2, 4, 4), True, rng)
        k = int(cond.sum())
        assert k in (1, 3, 5, 7) and cond[:k].all() and not cond[k:].any()
    # an image (one latent frame) and a tubelet that mixes frame 0 with frame 1 cannot condition on frame 0
    assert not conditioning_frames("i2v", 1, (2, 4, 4), True, rng).any()
    assert not conditioning_frames("i2v", 5, (2, 4, 4), False, rng).any()


def test_sample_tasks_follows_the_mix_and_falls_back_to_t2v():
    rng = random.Random(1)
    tasks, conds = sample_tasks({"t2v": 0.5, "i2v": 0.5}, [5] * 400 + [1] * 20, (2, 4, 4), True, rng)
    assert 150 < tasks[:400].count("i2v") < 250
    assert tasks[400:] == ["t2v"] * 20 and not any(c.any() for c in conds[400:])
    assert all(bool(c.any()) == (k != "t2v") for k, c in zip(tasks, conds))


def test_first_last_appends_the_last_frame_group_and_marks_it():
    """first_last: frame 0 and the appended group (a zero frame, then the last image's latent) are given;
    a sample without a stored last frame, or whose frames do not end on a token group, falls back to t2v."""
    rng = random.Random(2)
    assert conditioning_frames("first_last", 5, (2, 4, 4), True, rng, has_last=True).tolist() == [
        True, False, False, False, False, True, True]
    assert not conditioning_frames("first_last", 5, (2, 4, 4), True, rng, has_last=False).any()
    assert not conditioning_frames("first_last", 4, (2, 4, 4), True, rng, has_last=True).any()
    z, last = torch.randn(3, 5, 2, 2), torch.randn(3, 1, 2, 2)
    tasks, latents, conds = condition_row({"first_last": 1.0}, [z, z[:, :4], z], [last, last, None],
                                          (2, 4, 4), True, rng)
    assert tasks == ["first_last", "t2v", "t2v"]
    assert latents[0].shape == (3, 7, 2, 2) and torch.equal(latents[0][:, :5], z)
    assert not latents[0][:, 5].any() and torch.equal(latents[0][:, 6:], last)
    assert latents[1] is not None and latents[1].shape == (3, 4, 2, 2) and latents[2] is z
    assert conds[0].shape == (7,) and not conds[1].any() and not conds[2].any()


def test_bad_mix_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        check_mix({"t2v": 1.0, "i2i": 1.0})
    with pytest.raises(ValueError, match="at least one > 0"):
        check_mix({"t2v": 0.0})
