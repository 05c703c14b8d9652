"""train_video.py: exact resume, NaN skipping, bad-data counting, cache mode, DeepSpeed ZeRO ranks."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data_fixtures import make_dataset, tiny_vae

import train_video
from data.precache import precache
from data.sampling import SamplingConfig
from videodit import trainer
from videodit.checkpoint import load_dit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"manifest": make_dataset(root / "clips", num_clips=4, bad=True), "vae": tiny_vae(root / "vae")}


@pytest.fixture
def one_rank(monkeypatch):
    """In-process runs as plain `python train_video.py` (no launcher variables: the trainer makes a
    1-process gloo group itself); whatever it sets in os.environ is removed afterwards."""
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")  # records the original value for teardown
        monkeypatch.delenv(k)


def overrides(assets, out, **extra):
    sets = {"data.manifest": assets["manifest"], "data.vae": assets["vae"], "model.in_channels": 4,
            "train.output_dir": out, "train.save_every": 0, **extra}
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def run(assets, out, **extra):
    train_video.main(["--config", str(REPO / "configs/debug.yaml"), *overrides(assets, out, **extra)])
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_resume_reaches_same_loss(tmp_path, assets, one_rank):
    full = run(assets, tmp_path / "full", **{"train.max_steps": 4})
    first = run(assets, tmp_path / "split", **{"train.max_steps": 2})
    assert [m["step"] for m in first] == [1, 2]
    (tmp_path / "split/checkpoints/step00000003").mkdir()  # a save killed half-way: never 'latest'
    (tmp_path / "split/checkpoints/step00000003/garbage").write_text("partial")
    second = run(assets, tmp_path / "split", **{"train.max_steps": 4})
    assert [m["step"] for m in second] == [1, 2, 3, 4]
    assert second[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-6, abs=1e-7)
    assert second[2]["loss"] == pytest.approx(full[2]["loss"], rel=1e-6, abs=1e-7)
    log = (tmp_path / "split/train.log").read_text()
    assert "resumed from" in log and "step00000002" in log
    assert full[-1]["skipped_data"] >= 5 and "bad data skipped" in log
    model, meta = load_dit(tmp_path / "split/ema")
    assert meta["vae"] == str(assets["vae"]) and meta["flow"]["text_drop_prob"] == 0.1
    reference, _ = load_dit(tmp_path / "full/ema")  # EMA restored too: same average as the unstopped run
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert (tmp_path / "split/checkpoints/latest").read_text() == "step00000004"


def test_nan_loss_skips_step(tmp_path, assets, one_rank, monkeypatch):
    calls = {"n": 0}
    real = train_video.flow_loss

    def flaky(*args, **kwargs):
        loss, per = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), per) if calls["n"] == 2 else (loss, per)

    monkeypatch.setattr(train_video, "flow_loss", flaky)
    metrics = run(assets, tmp_path / "nan", **{"train.max_steps": 3})
    assert [m["step"] for m in metrics] == [1, 2, 3] and metrics[-1]["nan_skips"] == 1
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert "non-finite loss at step 1" in (tmp_path / "nan/train.log").read_text()
    model, _ = load_dit(tmp_path / "nan/ema")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_trains_from_latent_cache(tmp_path, assets, one_rank):
    from vae3d.io import load_vae

    sampling = SamplingConfig(min_tokens=8, max_tokens=32, max_frames=9)
    precache(assets["manifest"], tmp_path / "cache", load_vae(str(assets["vae"])), "default", sampling)
    metrics = run(assets, tmp_path / "cached", **{"train.max_steps": 2, "data.cache": tmp_path / "cache"})
    assert len(metrics) == 2 and metrics[-1]["skipped_data"] == 5
    # the checkpoint records the largest latent it trained on, per axis (generate.py notes larger requests)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    shapes = [s["latent_shape"] for s in index["samples"]]
    meta = json.loads((tmp_path / "cached" / "ema" / "config.json").read_text())["meta"]
    assert meta["trained_latent_max"] == [max(s[k] for s in shapes) for k in (1, 2, 3)]


def test_causal_tubelet_trains_from_a_cache_with_long_samples_capped(tmp_path, assets, one_rank):
    """A causal-tubelet model trains from a cache whose largest samples exceed the row budget (they keep
    data.keep_tokens tokens each: NaViT token dropping), with a mix of conditioning tasks."""
    from vae3d.io import load_vae

    sampling = SamplingConfig(min_tokens=48, max_tokens=96, max_frames=9, patch=(2, 1, 1), causal=True)
    precache(assets["manifest"], tmp_path / "cache", load_vae(str(assets["vae"])), "default", sampling)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert max(train_video.LatentCache(tmp_path / "cache", (2, 1, 1), causal=True).token_length(j)
               for j in range(len(index["samples"]))) > 32
    metrics = run(assets, tmp_path / "causal", **{
        "train.max_steps": 2, "data.cache": tmp_path / "cache", "model.patch": "[2,1,1]",
        "model.causal_tubelet": "true", "data.row_tokens": 32, "data.max_tokens": 32, "data.keep_tokens": 24,
        "data.tasks": "{t2v: 0.5, i2v: 0.25, extend: 0.25}"})
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)
    saved = json.loads((tmp_path / "causal" / "ema" / "config.json").read_text())
    assert saved["dit"]["causal_tubelet"] is True
    assert saved["meta"]["tasks"] == ["extend", "i2v", "t2v"]  # what the checkpoint was trained for


def test_first_last_trains_from_a_cache_with_last_frames_and_is_refused_without(tmp_path, assets, one_rank,
                                                                              monkeypatch):
    """data.tasks first_last trains from a cache built with last frames (samples grow by the last frame's
    token group) and is refused, naming the fix, from a cache without them."""
    from vae3d.io import load_vae

    vae = load_vae(str(assets["vae"]))
    sampling = SamplingConfig(min_tokens=8, max_tokens=32, min_frames=9, max_frames=9, patch=(2, 1, 1),
                              causal=True)
    precache(assets["manifest"], tmp_path / "cache", vae, "default", sampling, last_frame=True)
    precache(assets["manifest"], tmp_path / "plain", vae, "default", sampling)
    common = {"train.max_steps": 2, "model.patch": "[2,1,1]", "model.causal_tubelet": "true",
              "data.row_tokens": 96, "data.max_tokens": 32, "data.tasks": "{t2v: 0.2, first_last: 0.8}"}
    drawn, real = [], train_video.condition_row

    def spy(*args):
        tasks, latents, conds = real(*args)
        drawn.extend((t, z.shape[1], int(c.sum())) for t, z, c in zip(tasks, latents, conds))
        return tasks, latents, conds

    monkeypatch.setattr(train_video, "condition_row", spy)
    metrics = run(assets, tmp_path / "fl", **{**common, "data.cache": tmp_path / "cache"})
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) for m in metrics)
    assert ("first_last", 5, 3) in drawn  # 3 latent frames + the last frame's group (2), 1 + 2 given
    saved = json.loads((tmp_path / "fl" / "ema" / "config.json").read_text())
    assert saved["meta"]["tasks"] == ["first_last", "t2v"]
    with pytest.raises(ValueError, match="--last-frame"):
        run(assets, tmp_path / "no_last", **{**common, "data.cache": tmp_path / "plain"})


def test_size_weights_draw_cached_clips_by_size(tmp_path, assets, one_rank, monkeypatch):
    """data.size_weights: clips above every size key are never drawn; the setting needs a cache and
    well-formed weights."""
    from vae3d.io import load_vae

    sampling = SamplingConfig(min_tokens=2, max_tokens=32, max_frames=9)
    precache(assets["manifest"], tmp_path / "cache", load_vae(str(assets["vae"])), "default", sampling)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    stride = index["sampling"]["spatial_stride"]
    sides = sorted({max(s["latent_shape"][2:]) * stride for s in index["samples"]})
    assert len(sides) > 1  # the cache holds clips of more than one size
    loaded, real = [], train_video.LatentCache.load

    def spy(self, j):
        sample = real(self, j)
        loaded.append(max(sample["latent"].shape[2:]) * stride)
        return sample

    monkeypatch.setattr(train_video.LatentCache, "load", spy)
    metrics = run(assets, tmp_path / "small", **{"train.max_steps": 3, "data.cache": tmp_path / "cache",
                                                 "data.size_weights": f"{{{sides[0]}: 2.0}}"})
    assert len(metrics) == 3 and loaded and set(loaded) == {sides[0]}
    with pytest.raises(ValueError, match="size_weights needs a latent cache"):
        train_video.RunConfig(data=train_video.DataConfig(manifest="m.csv", size_weights={160: 1.0}))
    with pytest.raises(ValueError, match="size_weights must map"):
        train_video.DataConfig(size_weights={160: 0.0})
    assert train_video.DataConfig(size_weights={160: 1.0, 1280: 0.03}).size_weight(320) == 0.03
    assert train_video.DataConfig(size_weights={160: 1.0, 1280: 0.03}).size_weight(1440) == 0.0


def test_keep_tokens_must_fit_a_row():
    with pytest.raises(ValueError, match="keep_tokens"):
        train_video.RunConfig(data=train_video.DataConfig(row_tokens=32, max_tokens=32, keep_tokens=64))
    assert train_video.drop_rate(train_video.RunConfig(data=train_video.DataConfig(
        row_tokens=64, max_tokens=512, keep_tokens=64)))(256) == pytest.approx(0.75)


def test_manifest_missing_columns_refused_at_start(tmp_path, assets, one_rank):
    bad = tmp_path / "m.csv"
    bad.write_text("file,text\nclip0.mp4,hello\n")
    with pytest.raises(ValueError, match="missing required column.*'path', 'caption'"):
        train_video.main(["--config", str(REPO / "configs/debug.yaml"),
                          *overrides(assets, tmp_path / "x", **{"data.manifest": bad})])


def test_unknown_override_refused():
    with pytest.raises(ValueError, match="unknown config key"):
        train_video.main(["--set", "train.max_stepz=3"])


def deepspeed_run(assets, out, ranks, zero, steps=3):
    if shutil.which("deepspeed") is None:
        pytest.skip("deepspeed launcher not on PATH")
    cmd = ["deepspeed", "--num_accelerators", str(ranks), "--master_port", str(29600 + 10 * zero + ranks),
           "train_video.py", "--config", "configs/debug.yaml",
           *overrides(assets, out, **{"train.max_steps": steps, "deepspeed.zero_stage": zero})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (Path(out) / "train.log").read_text()
    assert f"world size {ranks}, ZeRO stage {zero}" in log
    metrics = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    return metrics


def test_deepspeed_two_ranks_zero2_smoke(tmp_path, assets):
    deepspeed_run(assets, tmp_path / "z2", ranks=2, zero=2)
    load_dit(tmp_path / "z2/ema")


@pytest.mark.slow
def test_deepspeed_two_ranks_zero3_matches_zero2(tmp_path, assets):
    z3 = deepspeed_run(assets, tmp_path / "z3", ranks=2, zero=3)
    z2 = deepspeed_run(assets, tmp_path / "z2", ranks=2, zero=2)
    assert z3[0]["loss"] == pytest.approx(z2[0]["loss"], rel=1e-5)  # same data, same init: same first loss


@pytest.mark.slow
def test_deepspeed_launcher_one_rank(tmp_path, assets):
    deepspeed_run(assets, tmp_path / "one", ranks=1, zero=0, steps=2)


def test_script_is_runnable_with_plain_python():
    res = subprocess.run([sys.executable, "train_video.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--set" in res.stdout


def test_init_from_copies_weights_and_resets_head_for_a_new_parameterisation(tmp_path, assets, one_rank):
    from videodit.checkpoint import save_dit
    from videodit.model import DiTConfig, VideoDiT

    src_cfg = DiTConfig(in_channels=4, hidden_size=32, depth=1, num_heads=2)
    source = VideoDiT(src_cfg)
    for p in source.parameters():  # adaLN-zero leaves zeros; make every weight recognisable
        torch.nn.init.normal_(p, std=0.1)
    save_dit(source, tmp_path / "src", {})
    same = VideoDiT(DiTConfig(in_channels=4, hidden_size=32, depth=1, num_heads=2))
    train_video.init_weights(same, str(tmp_path / "src"))
    for (name, a), b in zip(same.state_dict().items(), source.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    x0 = VideoDiT(DiTConfig(in_channels=4, hidden_size=32, depth=1, num_heads=2, prediction="x0"))
    train_video.init_weights(x0, str(tmp_path / "src"))
    torch.testing.assert_close(x0.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.all(x0.final_layer.linear.weight == 0) and torch.all(x0.final_layer.linear.bias == 0)
    with pytest.raises(ValueError, match="does not fit the model"):
        wider = VideoDiT(DiTConfig(in_channels=4, hidden_size=64, depth=1))
        train_video.init_weights(wider, str(tmp_path / "src"))
    # a whole run: an x0 model started from the velocity model's weights trains and exports its config
    metrics = run(assets, tmp_path / "x0", **{"train.max_steps": 2, "model.hidden_size": 32, "model.depth": 1,
                                             "model.num_heads": 2, "model.prediction": "x0",
                                             "train.init_from": tmp_path / "src"})
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    model, _ = load_dit(tmp_path / "x0/ema")
    assert model.config.prediction == "x0"
    assert "initialised from" in (tmp_path / "x0/train.log").read_text()


def test_lr_factor_warmup_constant_cosine():
    cfg = trainer.TrainConfig(max_steps=110, warmup_steps=10, decay_start=10, min_lr_ratio=0.1)
    assert trainer.lr_factor(0, cfg) == pytest.approx(0.1)  # warm-up
    assert trainer.lr_factor(9, cfg) == pytest.approx(1.0)
    assert trainer.lr_factor(60, cfg) == pytest.approx(0.55)  # half-way down the cosine
    assert trainer.lr_factor(110, cfg) == pytest.approx(0.1) == trainer.lr_factor(500, cfg)
    flat = trainer.TrainConfig(max_steps=110, warmup_steps=10)
    assert trainer.lr_factor(109, flat) == 1.0
    with pytest.raises(ValueError, match="decay_start"):
        trainer.TrainConfig(max_steps=10, decay_start=10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        trainer.TrainConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="stop_step"):
        trainer.TrainConfig(max_steps=10, stop_step=11)


def test_lr_decay_switched_on_at_resume_follows_the_step(tmp_path, assets, one_rank):
    """A run stopped early (train.stop_step) and resumed with decay_start set (it was constant before)
    gets the lr of its step."""
    sched = {"train.warmup_steps": 1, "train.lr": 1e-3, "train.min_lr_ratio": 0.2}
    first = run(assets, tmp_path / "r", **{"train.max_steps": 5, "train.stop_step": 2, **sched})
    assert [m["step"] for m in first] == [1, 2]
    assert (tmp_path / "r/checkpoints/step00000002").is_dir()
    resumed = run(assets, tmp_path / "r", **{"train.max_steps": 5, "train.decay_start": 2, **sched})
    cfg = trainer.TrainConfig(max_steps=5, warmup_steps=1, lr=1e-3, decay_start=2, min_lr_ratio=0.2)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5]
    assert [m["lr"] for m in resumed[:2]] == pytest.approx([1e-3, 1e-3])
    expected = [1e-3 * trainer.lr_factor(s, cfg) for s in (3, 4, 5)]
    assert [m["lr"] for m in resumed[2:]] == pytest.approx(expected)
    assert resumed[-1]["lr"] == pytest.approx(2e-4)


def test_init_from_another_patch_size_copies_the_body(tmp_path):
    from videodit.checkpoint import save_dit
    from videodit.model import DiTConfig, VideoDiT

    kw = dict(in_channels=4, hidden_size=32, depth=1, num_heads=2, prediction="x0")
    source = VideoDiT(DiTConfig(**kw, patch=(2, 4, 4)))
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_dit(source, tmp_path / "src", {})
    small = VideoDiT(DiTConfig(**kw, patch=(1, 2, 2)))
    fresh = {k: v.clone() for k, v in small.state_dict().items()}
    train_video.init_weights(small, str(tmp_path / "src"))
    src = source.state_dict()
    for k, v in small.state_dict().items():  # the body copied; what follows the patch keeps its fresh init
        torch.testing.assert_close(v, fresh[k] if k.startswith(train_video.PATCH_TIED) else src[k],
                                   rtol=0, atol=0)
    assert torch.all(small.final_layer.linear.weight == 0)
    with torch.no_grad():  # the zero head: a fresh output of 0 on the new tokens
        out = small.forward_samples([torch.randn(4, 3, 4, 4)], torch.tensor([0.3]), [torch.randn(5, 384)])[0]
    assert torch.all(out == 0)
    other = VideoDiT(DiTConfig(**{**kw, "in_channels": 8}, patch=(1, 2, 2)))
    with pytest.raises(ValueError, match="in_channels"):
        train_video.init_weights(other, str(tmp_path / "src"))


def test_pixel_term_trains_through_the_frozen_vae_decoder(tmp_path, assets, one_rank):
    plain = run(assets, tmp_path / "plain", **{"train.max_steps": 2})
    pixel = run(assets, tmp_path / "pixel", **{"train.max_steps": 2, "flow.pixel_weight": 100.0,
                                               "flow.pixel_samples": 4})
    assert all(math.isfinite(m["loss"]) for m in pixel)
    assert pixel[0]["loss"] > plain[0]["loss"]  # same draws, the decoded term on top
    with pytest.raises(ValueError, match="pixel_weight > 0 needs data.token_drop 0"):
        bad = {"flow.pixel_weight": 1.0, "data.token_drop": 0.5}
        run(assets, tmp_path / "x", **bad)
