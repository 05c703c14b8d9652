"""bench.conditioning: i2v and extension requests packed through the pipeline, scored per task."""

import json

import numpy as np
import torch

from bench import conditioning
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT


def test_runs_every_task_on_a_tiny_causal_checkpoint_smoke(tiny_dit_ckpt, tmp_path):
    meta = json.loads((tiny_dit_ckpt / "config.json").read_text())["meta"]
    torch.manual_seed(0)
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2,
                             patch=(2, 1, 1), causal_tubelet=True))
    ckpt = save_dit(dit, tmp_path / "causal", meta)
    lines = conditioning.main(["--dit", str(ckpt), "--num", "2", "--frames", "9", "--res", "16", "24",
                               "--tasks", "i2v", "extend", "first_last"])
    i2v, ext, fl, summary = lines
    assert [x["task"] for x in (i2v, ext, fl)] == ["i2v", "extend", "first_last"]
    assert all(x["clips"] == 2 for x in (i2v, ext, fl))
    assert {"colour", "shape", "motion"} <= set(i2v) and {"continues", "seam"} <= set(ext) and "end" in fl
    assert all(np.isfinite(x[k]) for x in (i2v, ext, fl) for k in ("kept_psnr", "vae_psnr"))
    assert summary["tasks"] == ["i2v", "extend", "first_last"] and summary["trained_for"] == meta.get(
        "tasks", ["t2v"])


def test_the_end_frame_is_judged_against_the_frame_diagonal():
    last = np.zeros((32, 64, 3), np.uint8)
    last[12:20, 40:48] = 255
    out = np.zeros((3, 32, 64, 3), np.uint8)
    out[-1, 12:20, 36:44] = 255  # 4 px off: within 8% of the 71.6 px diagonal
    assert conditioning.end_ok(out, last) is True
    out[-1] = 0
    out[-1, 12:20, 4:12] = 255  # 36 px off
    assert conditioning.end_ok(out, last) is False


def test_seam_step_is_judged_against_the_median_step():
    frames = np.zeros((6, 32, 64, 3), np.uint8)
    for f, x in enumerate([4, 8, 12, 16, 40, 44]):  # steady 4 px steps, then a 24 px jump at frame 4
        frames[f, 12:20, x : x + 8] = 255
    assert conditioning.seam_ok(frames, 3) is True
    assert conditioning.seam_ok(frames, 4) is False
