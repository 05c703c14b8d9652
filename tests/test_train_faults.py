"""Both trainers under faults: train_vae.py resumes exactly (clip stream and RNG included) also after a
crash mid-save; train_video.py stops on a latent cache that is all NaN, and skips and counts a cache shard
that is truncated or not a safetensors file at all (a crafted pickle, never unpickled)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from faults import InjectedCrash, crash_at
from safetensors.torch import load_file, save_file
from test_data_fixtures import make_dataset, tiny_vae

import train_vae
import train_video
from data.precache import precache
from data.sampling import SamplingConfig
from vae3d.io import load_vae

REPO = Path(__file__).resolve().parents[1]
VAE_TINY = ["model.latent_channels=4", "model.base_channels=8", "model.channel_mult=[1, 2, 2]",
            "data.synthetic_clips=3", "data.synthetic_min_size=32", "data.synthetic_max_size=32",
            "data.max_frames=5", "data.max_tokens=16", "data.image_fraction=0.5", "stats_clips=0",
            "train.lr=0.003", "train.log_every=1", "train.save_every=2"]


@pytest.fixture(autouse=True)
def one_rank(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


def vae_run(out, *extra):
    args = []
    for item in [*VAE_TINY, f"train.output_dir={out}", *extra]:
        args += ["--set", item]
    return train_vae.main(args)


def metric_lines(out):
    return [json.loads(s) for s in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vae_reference(tmp_path_factory):
    """An uninterrupted 5-step VAE run (3 clips: the stream wraps into its second epoch) and its world."""
    out = tmp_path_factory.mktemp("vae_full")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            mp.setenv(k, "")
            mp.delenv(k)
        vae_run(out, "train.max_steps=5")
    return out


def same_losses(got, want):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        for key in ("loss", "l1", "psnr", "kl"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_vae_resume_is_exact_clip_stream_and_rng_included(tmp_path, vae_reference):
    """Stopped at step 2 and resumed, the run logs exactly the losses of an uninterrupted one: the clip
    stream continues where it was (across an epoch boundary), and so does every RNG."""
    out = tmp_path / "split"
    shutil.copytree(vae_reference / "world", out / "world")
    vae_run(out, "train.max_steps=5", "train.stop_step=2")
    vae_run(out, "train.max_steps=5")
    same_losses(metric_lines(out), metric_lines(vae_reference))
    a, b = load_vae(out / "vae"), load_vae(vae_reference / "vae")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_vae_crash_mid_save_resumes_from_the_last_complete_checkpoint(tmp_path, vae_reference):
    """A crash inside step 4's save, as `latest` is switched: the run continues from step 2 to the same
    losses, never from zero, and the exported VAE of step 2 stays loadable. (Every other kill point of a
    save: tests/test_trainer_faults.py in-process, tests/test_kill.py with SIGKILL.)"""
    out = tmp_path / "crash"
    shutil.copytree(vae_reference / "world", out / "world")
    vae_run(out, "train.max_steps=5", "train.stop_step=2")
    with pytest.raises(InjectedCrash), crash_at(1, out / "checkpoints", match="checkpoints/latest'"):
        vae_run(out, "train.max_steps=5")
    assert load_vae(out / "vae").config.latent_channels == 4
    assert (out / "checkpoints" / "latest").read_text() == "step00000002"
    vae_run(out, "train.max_steps=5")
    same_losses(metric_lines(out), metric_lines(vae_reference))


def test_vae_new_run_into_an_existing_run_is_refused(tmp_path, vae_reference):
    with pytest.raises(ValueError, match=rf"{vae_reference}.*already holds a run"):
        vae_run(vae_reference, "train.max_steps=5", "train.resume=false")


# ---- train_video.py on a latent cache ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    manifest = make_dataset(root / "clips", num_clips=4)
    vae = tiny_vae(root / "vae")
    sampling = SamplingConfig(min_tokens=8, max_tokens=32, max_frames=9)
    precache(manifest, root / "cache", load_vae(str(vae)), "default", sampling, shard_size=2)
    return root / "cache"


def video_run(cache_dir, out, **extra):
    sets = {"data.cache": cache_dir, "model.in_channels": 4, "train.output_dir": out, "train.save_every": 0,
            "train.max_steps": 2, **extra}
    train_video.main(["--config", str(REPO / "configs/debug.yaml"),
                      *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]])
    return metric_lines(out)


def test_a_cache_of_nan_latents_stops_the_run_naming_step_and_samples(tmp_path, cache, monkeypatch):
    """With NaN in every cached latent the run stops after train.max_nonfinite micro-steps instead of
    skipping forever; the test gives up (fails) after 200 micro-steps instead of hanging."""
    bad = tmp_path / "nan_cache"
    shutil.copytree(cache, bad)
    for shard in bad.glob("shard_*.safetensors"):
        tensors = load_file(shard)
        save_file({k: v.fill_(float("nan")) if k.startswith("latent") else v for k, v in tensors.items()},
                  str(shard))
    calls = {"n": 0}
    real = train_video.flow_loss

    def bounded(*args, **kwargs):
        calls["n"] += 1
        assert calls["n"] < 200, "still skipping non-finite losses after 200 micro-steps"
        return real(*args, **kwargs)

    monkeypatch.setattr(train_video, "flow_loss", bounded)
    with pytest.raises(RuntimeError, match=r"20 consecutive micro-steps had a non-finite loss, the last in "
                                           r"step 1 on samples \[.*clip\d\.mp4"):
        video_run(bad, tmp_path / "out")
    assert calls["n"] == 20


@pytest.mark.parametrize("damage", ["truncated", "crafted pickle"])
def test_an_unreadable_cache_shard_is_skipped_warned_and_counted(tmp_path, cache, damage):
    broken = tmp_path / "broken_cache"
    shutil.copytree(cache, broken)
    shard = broken / "shard_00000.safetensors"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        class Payload:
            def __reduce__(self):
                import os

                return (os.system, (f"touch {marker}",))

        shard.write_bytes(pickle.dumps(Payload()))
    metrics = video_run(broken, tmp_path / "out", **{"train.max_steps": 3})
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["skipped_data"] == 2  # the two samples of that shard, counted once each
    log = (tmp_path / "out" / "train.log").read_text()
    assert "skipping the samples of cache shard" in log and "shard_00000" in log
    assert not marker.exists()
