"""bench.conditioning: i2v and extension requests packed through the pipeline, scored per task."""

import json

import numpy as np
import torch

from bench import conditioning
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT


def test_runs_both_tasks_on_a_tiny_causal_checkpoint_smoke(tiny_dit_ckpt, tmp_path):
    meta = json.loads((tiny_dit_ckpt / "config.json").read_text())["meta"]
    torch.manual_seed(0)
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2,
                             patch=(2, 1, 1), causal_tubelet=True))
    ckpt = save_dit(dit, tmp_path / "causal", meta)
    lines = conditioning.main(["--dit", str(ckpt), "--num", "2", "--frames", "9", "--res", "16", "24"])
    i2v, ext, summary = lines
    assert (i2v["task"], ext["task"], i2v["clips"], ext["clips"]) == ("i2v", "extend", 2, 2)
    assert {"colour", "shape", "motion"} <= set(i2v) and {"continues", "seam"} <= set(ext)
    assert all(np.isfinite(x[k]) for x in (i2v, ext) for k in ("kept_psnr", "vae_psnr"))
    assert summary["first_last"] == "not built"


def test_seam_step_is_judged_against_the_median_step():
    frames = np.zeros((6, 32, 64, 3), np.uint8)
    for f, x in enumerate([4, 8, 12, 16, 40, 44]):  # steady 4 px steps, then a 24 px jump at frame 4
        frames[f, 12:20, x : x + 8] = 255
    assert conditioning.seam_ok(frames, 3) is True
    assert conditioning.seam_ok(frames, 4) is False
