"""bench.gpu: skips cleanly without CUDA, imports nothing a bare CUDA machine lacks, and its checks run
(on CPU, at tiny sizes) end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench import gpu
from videodit.model import DiTConfig, VideoDiT

REPO = Path(__file__).resolve().parents[1]


def test_skips_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "bench.gpu"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"bench": "gpu", "skipped": "no CUDA device"}


def test_imports_only_torch_einops_safetensors_and_our_code():
    """(torch itself imports numpy and tqdm when they are installed, so they are not checked.)"""
    code = ("import sys, bench.gpu; "
            "print([m for m in ('diffusers', 'deepspeed', 'transformers', 'yaml', 'flash_attn', 'xformers', "
            "'av', 'decord', 'data', 'vae3d') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_backend_check_on_cpu(capsys):
    rows = gpu.check_backends("cpu", lengths=(40, 17, 33), nh=2, dh=8)
    status = {r["backend"]: r["status"] for r in rows}
    assert status["sdpa"] == "reference" and 0 < rows[0]["error_out"] < 2e-2  # bf16 against fp32
    assert status["flash"] == status["xformers"] == "unavailable"  # CUDA only
    assert status["flex"] == "error"  # torch has no FlexAttention backward on CPU: reported, not raised


def test_training_mfu_and_sampling_step_on_cpu(capsys):
    mfu = gpu.training_mfu("cpu", peak=1e11, width=32, heads=2, tokens=256, steps=1, depth=1)
    assert mfu["tokens"] == 256 and mfu["step_s"] > 0 and 0 < mfu["mfu"] < 1
    model = VideoDiT(DiTConfig(in_channels=4, text_dim=12, hidden_size=32, depth=1, num_heads=2))
    step = gpu.sampling_step(model, steps_total=8, text_tokens=3, name="tiny", timed=1, latent=(4, 3, 8, 8))
    assert step["tokens_per_pass"] == 3 * 4 * 4 and step["step_s"] > 0
    assert abs(step["sampling_s_extrapolated"] - 8 * step["step_s"]) <= 0.1


def test_embedded_default_loads_without_the_config_module():
    model, steps = gpu.load_embedded_default("cpu", torch.float32)
    assert steps >= 1 and model.config.in_channels == 16
    assert not model.training
