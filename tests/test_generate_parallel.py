"""Sampling with a request's tokens split across 2 ranks (gloo): the same latents and videos as one rank."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import generate
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import read_mp4
from videodit.sampling import Request, sample
from videodit.sequence_parallel import ShardedSampler

REPO = Path(__file__).resolve().parents[1]
TEXT_DIM = 12


def model() -> VideoDiT:
    torch.manual_seed(0)
    net = VideoDiT(DiTConfig(in_channels=4, text_dim=TEXT_DIM, hidden_size=32, depth=2, num_heads=2,
                             attention="sdpa", patch=(2, 2, 2), causal_tubelet=True))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the zero init (the output layer), so predictions are not all zero
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def requests() -> list[Request]:
    """Three shapes in one pass; one with a negative prompt, one with a conditioning first frame."""
    g = torch.Generator().manual_seed(2)
    text = [torch.randn(n, TEXT_DIM, generator=g) for n in (5, 3, 4)]
    prefix = torch.randn(4, 1, 6, 4, generator=g)
    return [Request(size=(5, 6, 8), text=text[0], seed=1),
            Request(size=(1, 4, 4), text=text[1], seed=2, negative=text[2][:2]),
            Request(size=(3, 6, 4), text=text[2], seed=3, prefix=prefix)]


def run(net) -> list[torch.Tensor]:
    return sample(net, requests(), steps=3, guidance=3.0, progress=False, skip_guidance=1.0, skip_blocks=[1])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(run(ShardedSampler(model(), rank, 2)), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sharded_sampling_matches_one_rank(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    reference = run(model())
    for rank in range(2):
        latents = torch.load(tmp_path / f"rank{rank}.pt")
        for z, ref in zip(latents, reference, strict=True):
            assert ref.abs().max() > 0.1
            assert (z - ref).abs().max() <= 1e-5


def test_sharded_sampler_refuses_heads_that_do_not_split():
    with pytest.raises(ValueError, match="2 heads cannot be split across 3 sequence-parallel ranks"):
        ShardedSampler(model(), 0, 3)


@pytest.mark.slow  # about 40 s: the DeepSpeed launcher, 2 ranks loading the text encoder
def test_generate_under_the_launcher_writes_the_one_rank_videos(tiny_dit_ckpt, tmp_path, monkeypatch):
    if shutil.which("deepspeed") is None:
        pytest.skip("deepspeed launcher not on PATH")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in [
        {"prompt": "a red ball", "frames": 5, "res": "32x48"},
        {"prompt": "a blue square", "frames": 1, "res": "48x32", "negative_prompt": "green"}]))
    args = ["generate.py", "--prompts-file", str(prompts), "--ckpt", str(tiny_dit_ckpt), "--steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launch = ["deepspeed", "--num_accelerators", "2", "--master_port", "29730"]
    res = subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 2  # rank 0 alone writes and reports
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert generate.main([*args[1:], "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["0000.mp4", "0001.mp4"]
    for name in ("0000.mp4", "0001.mp4"):
        one, two = read_mp4(tmp_path / "one" / name), read_mp4(tmp_path / "two" / name)
        assert one.shape == two.shape and np.array_equal(one, two), name
