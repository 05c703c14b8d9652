import json

import numpy as np
import pytest
import torch

from data.synthetic import durations, render_clip, render_dataset, resolutions, sample_spec
from videodit.eval import analyse_clip, classify_motion, evaluate_videos, main, psnr, score_clips, vae_psnr
from videodit.mp4 import write_mp4
from videodit.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, make_caption


def _ground_truth(n, seed=0):
    """n rendered clips covering every (colour, shape, motion) combination, with their captions."""
    rng = np.random.default_rng(seed)
    combos = [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]
    order = rng.permutation(len(combos))
    items = []
    for i in range(n):
        combo = combos[order[i % len(combos)]]
        spec = sample_spec(rng, combo, BACKGROUNDS[i % 3], resolutions(), durations())
        items.append((render_clip(spec), make_caption(spec.attrs, rng)))
    return items


def test_ground_truth_scores_full_marks_and_shuffled_scores_low():
    items = _ground_truth(144)
    report = score_clips(items)
    assert report["all"]["n"] == 144
    for key in ("colour", "shape", "motion", "background", "all"):
        assert report["all"][key] == 1.0, (key, report["all"])
    assert report["heldout"]["n"] > 0 and report["heldout"]["all"] == 1.0
    # the same clips under a wrong prompt: roughly chance level per attribute
    rng = np.random.default_rng(1)
    items = items[::2]
    prompts = [p for _, p in items]
    shuffled = [(clip, prompts[j]) for (clip, _), j in zip(items, rng.permutation(len(items)))]
    bad = score_clips(shuffled)["all"]
    assert bad["colour"] < 0.35 and bad["shape"] < 0.6 and bad["motion"] < 0.4 and bad["all"] < 0.1, bad


def test_ground_truth_through_mp4_files(tmp_path):
    render_dataset(tmp_path, num=16, seed=2, num_heldout=8, max_size=64, max_frames=17)
    for name in ("train.jsonl", "heldout.jsonl"):
        report = evaluate_videos(tmp_path / name)
        assert report["all"]["all"] == 1.0, report["all"]
    assert evaluate_videos(tmp_path / "heldout.jsonl")["heldout"]["n"] == 8


def test_blobs_count_one_object_and_speckle():
    rng = np.random.default_rng(3)
    spec = sample_spec(rng, ("red", "square", "left"), "black", [(96, 128)], [9])
    clean = analyse_clip(render_clip(spec))
    assert clean["blobs"] == 1 and clean["max_blobs"] == 1
    speckle = np.zeros((5, 96, 128, 3), np.uint8)
    for y, x in rng.integers(4, 90, size=(30, 2)):
        speckle[:, y : y + 3, x : x + 3] = (230, 30, 30)  # 30 separate 3x3 specks (some may touch)
    assert analyse_clip(speckle)["blobs"] >= 20


def test_a_single_frame_is_scored_without_motion():
    rng = np.random.default_rng(4)
    spec = sample_spec(rng, ("blue", "circle", "left"), "navy", [(96, 96)], [1])
    report = score_clips([(render_clip(spec), "a blue ball rolls to the left on a navy background")])
    assert report["all"]["motion"] is None and report["all"]["all"] == 1.0


def test_blank_clip_scores_nothing():
    blank = np.zeros((9, 48, 48, 3), np.uint8)
    measured = analyse_clip(blank)
    assert measured["colour"] is None and measured["shape"] is None and measured["background"] == "black"
    report = score_clips([(blank, "a red ball falls on a black background")])["all"]
    assert report["colour"] == 0.0 and report["background"] == 1.0 and report["all"] == 0.0


def test_motion_classifier_cases():
    F = 9
    t = np.linspace(0, 1, F)
    flat = np.full(F, 32.0)
    assert classify_motion(np.stack([flat, 10 + 30 * t], 1), 64, 64) == "right"
    assert classify_motion(np.stack([flat, 40 - 30 * t], 1), 64, 64) == "left"
    assert classify_motion(np.stack([50 - 30 * t, flat], 1), 64, 64) == "up"
    assert classify_motion(np.stack([10 + 30 * t, flat], 1), 64, 64) == "down"
    assert classify_motion(np.stack([50 - 30 * np.abs(np.sin(np.pi * t)), flat], 1), 64, 64) == "bouncing"
    assert classify_motion(np.stack([flat + 0.5 * t, flat], 1), 64, 64) == "still"


def test_folder_with_sidecar_prompts_and_cli(tmp_path, capsys):
    items = _ground_truth(3, seed=4)
    for i, (clip, prompt) in enumerate(items):
        write_mp4(tmp_path / f"{i}.mp4", clip)
        (tmp_path / f"{i}.txt").write_text(prompt)
    main(["--videos", str(tmp_path), "--out", str(tmp_path / "r.json")])
    report = json.loads(capsys.readouterr().out)
    assert report["prompt_following"]["all"]["n"] == 3
    assert json.loads((tmp_path / "r.json").read_text()) == report
    (tmp_path / "2.txt").unlink()
    with pytest.raises(ValueError, match="no prompt for"):
        evaluate_videos(tmp_path)


class _OffsetVAE:
    """Identity 'VAE' whose decode adds a known offset: PSNR is exactly 10 log10(4 / offset^2)."""

    spatial_stride = 8

    def __init__(self, offset):
        self.offset = offset

    def encode(self, video):
        return video * 1.0

    def decode(self, latent, num_frames=None):
        assert latent.shape[2] == num_frames
        return latent + self.offset


def test_vae_psnr_matches_reference():
    clip = np.full((5, 20, 24, 3), 128, np.uint8)  # mid grey, so the offset is never clamped
    got = vae_psnr(_OffsetVAE(0.1), [clip, clip])
    assert got == pytest.approx(10 * np.log10(4 / 0.01), abs=1e-3)  # 26.02 dB
    assert vae_psnr(_OffsetVAE(0.0), [clip]) == float("inf")
    a = torch.zeros(1, 3, 2, 4, 4)
    assert psnr(a, a + 0.2) == pytest.approx(10 * np.log10(4 / 0.04))
