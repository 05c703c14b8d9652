"""SIGKILL at every file operation of each save, in a real process (no cleanup code runs): the DiT trainer,
the VAE trainer, the latent precache and generate.py's mp4 output. After each kill the next run continues
from the last complete state with the same later losses (or the same cache), and no existing output is
lost. Slow: one process per kill point."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_data_fixtures import make_dataset, tiny_vae

import train_vae
import train_video
from data.precache import precache
from data.sampling import SamplingConfig
from vae3d.io import load_vae
from videodit.checkpoint import load_dit
from videodit.mp4 import read_mp4, write_mp4

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DRIVER = str(REPO / "tests" / "kill_driver.py")
LIMIT = 60  # kill points tried at most per save


@pytest.fixture(autouse=True)
def one_rank(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


def killed(n: int, under: Path, module: str, args: list[str], match: str = "") -> bool:
    """Run `module.main(args)` with a SIGKILL at its n-th file operation under `under` -> whether it was
    killed (False: it finished first)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, DRIVER, str(n), str(under), match, module, *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == -9:
        return True
    assert proc.returncode == 0, proc.stderr[-3000:]
    return False


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_run(got: list[dict], want: list[dict], keys=("loss",)) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (a["step"], k)


def kill_every_phase(start: Path, work: Path, module: str, args: list[str], resume, check) -> int:
    """Copy `start` to `work`, run with a SIGKILL at kill point n = 1, 2, ...; after each kill `resume()`
    and `check(n)`. -> kill points tried (the run that finished uninterrupted is not counted)."""
    for n in range(1, LIMIT + 1):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(start, work, symlinks=True)
        if not killed(n, work, module, args):
            return n - 1
        resume()
        check(n)
    raise AssertionError(f"still killed after {LIMIT} kill points")


# ---- the DiT trainer on a latent cache --------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_cache")
    manifest = make_dataset(root / "clips", num_clips=4)
    sampling = SamplingConfig(min_tokens=8, max_tokens=32, max_frames=9)
    precache(manifest, root / "cache", load_vae(str(tiny_vae(root / "vae"))), "default", sampling,
             shard_size=2)
    return root / "cache"


def dit_args(cache_dir: Path, out: Path, **extra) -> list[str]:
    sets = {"data.cache": cache_dir, "model.in_channels": 4, "train.output_dir": out, "train.save_every": 2,
            "train.max_steps": 4, **extra}
    return ["--config", str(REPO / "configs/debug.yaml"), *[x for k, v in sets.items()
                                                            for x in ("--set", f"{k}={v}")]]


def test_dit_trainer_killed_at_every_step_of_a_save(tmp_path, cache):
    train_video.main(dit_args(cache, tmp_path / "full"))
    reference = metrics(tmp_path / "full")
    ref_model, _ = load_dit(tmp_path / "full" / "ema")
    train_video.main(dit_args(cache, tmp_path / "start", **{"train.stop_step": 2}))
    work = tmp_path / "work"

    def check(n):
        same_run(metrics(work), reference)
        model, _ = load_dit(work / "ema")
        for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"kill point {n}: {name}")

    def resume():
        load_dit(work / "ema")  # the exported model is loadable right after the kill
        train_video.main(dit_args(cache, work))

    tried = kill_every_phase(tmp_path / "start", work, "train_video", dit_args(cache, work), resume, check)
    print(json.dumps({"suite": "kill: DiT trainer", "tried": tried, "held": tried}))
    assert tried >= 15


# ---- the VAE trainer --------------------------------------------------------------------------------------
VAE_TINY = ["model.latent_channels=4", "model.base_channels=8", "model.channel_mult=[1, 2, 2]",
            "data.synthetic_clips=3", "data.synthetic_min_size=32", "data.synthetic_max_size=32",
            "data.max_frames=5", "data.max_tokens=16", "data.image_fraction=0.5", "stats_clips=0",
            "train.lr=0.003", "train.log_every=1", "train.save_every=2", "train.max_steps=4"]


def vae_args(out: Path, *extra: str) -> list[str]:
    return [x for item in [*VAE_TINY, f"train.output_dir={out}", *extra] for x in ("--set", item)]


def test_vae_trainer_killed_at_every_step_of_a_save(tmp_path):
    train_vae.main(vae_args(tmp_path / "full"))
    reference = metrics(tmp_path / "full")
    start = tmp_path / "start"
    shutil.copytree(tmp_path / "full" / "world", start / "world")
    train_vae.main(vae_args(start, "train.stop_step=2"))
    work = tmp_path / "work"
    ref_state = load_vae(tmp_path / "full" / "vae").state_dict()

    def check(n):
        same_run(metrics(work), reference, ("loss", "l1", "psnr"))
        for (name, a), b in zip(load_vae(work / "vae").state_dict().items(), ref_state.values()):
            assert torch.equal(a, b), (n, name)

    def resume():
        load_vae(work / "vae")
        train_vae.main(vae_args(work))

    tried = kill_every_phase(start, work, "train_vae", vae_args(work), resume, check)
    print(json.dumps({"suite": "kill: VAE trainer", "tried": tried, "held": tried}))
    assert tried >= 15


# ---- the latent precache ----------------------------------------------------------------------------------
def test_precache_killed_at_every_step(tmp_path):
    manifest = make_dataset(tmp_path / "clips", num_clips=3)
    vae = tiny_vae(tmp_path / "vae")
    args = ["--manifest", str(manifest), "--vae", str(vae), "--min-tokens", "4", "--max-tokens", "16",
            "--max-frames", "9", "--shard-size", "1"]
    from data.precache import main

    main([*args, "--out", str(tmp_path / "ref")])
    want = json.loads((tmp_path / "ref" / "index.json").read_text())
    (tmp_path / "empty").mkdir()
    work = tmp_path / "work"

    def check(n):
        got = json.loads((work / "index.json").read_text())
        assert got["samples"] == want["samples"] and got["settings_hash"] == want["settings_hash"], n
        for k in range(3):
            a = load_file(work / f"shard_{k:05d}.safetensors")
            b = load_file(tmp_path / "ref" / f"shard_{k:05d}.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a), n

    tried = kill_every_phase(tmp_path / "empty", work, "data.precache", [*args, "--out", str(work)],
                             lambda: main([*args, "--out", str(work)]), check)
    print(json.dumps({"suite": "kill: precache", "tried": tried, "held": tried}))
    assert tried >= 8


# ---- generate.py's output ---------------------------------------------------------------------------------
def test_generate_killed_while_writing_keeps_the_existing_video(tmp_path, tiny_dit_ckpt):
    """--overwrite of an existing video, killed at each step: the old video stays whole until the new one is
    complete, and a video never carries the other one's sidecar."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "v.mp4"
    write_mp4(out, np.full((3, 32, 32, 3), 77, np.uint8), fps=8)
    out.with_suffix(".json").write_text(json.dumps({"old": True}))
    before = out.read_bytes()
    args = ["--prompt", "a red ball", "--frames", "9", "--res", "32x32", "--ckpt", str(tiny_dit_ckpt),
            "--out", str(out), "--overwrite"]
    tried = 0
    for n in range(1, LIMIT + 1):
        if not killed(n, out_dir, "generate", args):
            break
        tried += 1
        sidecar = out.with_suffix(".json")
        described = json.loads(sidecar.read_text()) if sidecar.exists() else None
        if out.read_bytes() == before:  # the earlier video, whole
            assert described in (None, {"old": True}), n
        else:  # the new video, complete
            assert read_mp4(out).shape == (9, 32, 32, 3), n
            assert described is None or described["request"]["frames"] == 9, n
        out.write_bytes(before)
        sidecar.write_text(json.dumps({"old": True}))
    assert tried >= 3  # between chunks of the stream, before the file is renamed into place, ...
    assert read_mp4(out).shape == (9, 32, 32, 3)  # the uninterrupted run replaced it
    assert sorted(p.name for p in out_dir.iterdir()) == ["v.json", "v.mp4"]  # what kills left is gone
    print(json.dumps({"suite": "kill: generate.py mp4 output", "tried": tried, "held": tried}))
