"""train_vae.py: reconstruction loss falls on a tiny run; resume continues from the last checkpoint."""

import json

import pytest
import torch

import train_vae
from vae3d.io import load_vae

TINY = ["model.latent_channels=4", "model.base_channels=8", "model.channel_mult=[1, 2, 2]",
        "data.synthetic_clips=2", "data.synthetic_min_size=32", "data.synthetic_max_size=32",
        "data.max_frames=5", "data.max_tokens=16", "data.image_fraction=0.0", "stats_clips=2",
        "train.lr=0.003", "train.log_every=1"]


@pytest.fixture(autouse=True)
def one_rank(monkeypatch):
    """In-process runs as plain `python train_vae.py` (a 1-process group); whatever the trainer sets in
    os.environ is removed afterwards."""
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


def run(tmp_path, *extra):
    args = []
    for item in [*TINY, f"train.output_dir={tmp_path}", *extra]:
        args += ["--set", item]
    return train_vae.main(args)


def test_reconstruction_loss_falls_and_stats_are_stored(tmp_path):
    records = run(tmp_path, "train.max_steps=24", "train.save_every=0")
    first = sum(r["l1"] for r in records[:4]) / 4
    last = sum(r["l1"] for r in records[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    final = load_vae(tmp_path / "final")
    assert not torch.equal(final.latent_scale, torch.ones(4))  # measured, not the default
    assert (final.latent_scale > 0).all()


def test_resume_continues_from_last_checkpoint(tmp_path):
    run(tmp_path, "train.max_steps=3", "train.save_every=2", "stats_clips=0")
    records = run(tmp_path, "train.max_steps=5", "train.save_every=2", "stats_clips=0")
    assert [r["step"] for r in records] == [4, 5]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step00000005"
    saved = load_vae(tmp_path / "checkpoints" / "step00000005" / "vae")
    assert saved.config == load_vae(tmp_path / "vae").config
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]


def test_gan_phase_runs_and_logs_discriminator(tmp_path):
    records = run(tmp_path, "train.max_steps=6", "loss.gan_start=3", "loss.disc_channels=4",
                  "loss.disc_layers=2")
    assert "gan_d" not in records[2] and "gan_d" in records[3]


def test_decoder_finetune_keeps_encoder_and_latent_stats(tmp_path):
    run(tmp_path / "base", "train.max_steps=2", "train.save_every=0")
    base = load_vae(tmp_path / "base" / "final")
    records = run(tmp_path / "ft", "train.max_steps=3", "train.save_every=0", "freeze_encoder=true",
                  f"train.init_from={tmp_path / 'base' / 'final'}", "loss.mse_weight=1.0")
    assert "mse" in records[0]
    tuned = load_vae(tmp_path / "ft" / "final")
    for (name, a), b in zip(base.encoder.state_dict().items(), tuned.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(base.latent_shift, tuned.latent_shift)
    assert torch.equal(base.latent_scale, tuned.latent_scale)
    changed = [not torch.equal(a, b) for a, b in zip(base.decoder.parameters(), tuned.decoder.parameters())]
    assert all(changed)


def test_decoder_finetune_can_add_a_refiner(tmp_path):
    patch = ["model.arch=patch", "model.spatial_stride=8"]
    run(tmp_path / "base", *patch, "train.max_steps=1", "train.save_every=0", "stats_clips=0")
    base = load_vae(tmp_path / "base" / "final")
    run(tmp_path / "ft", *patch, "model.refine_channels=4", "train.max_steps=3", "train.save_every=0",
        "freeze_encoder=true", f"train.init_from={tmp_path / 'base' / 'final'}")
    tuned = load_vae(tmp_path / "ft" / "final")
    assert tuned.config.refine_channels == 4 and tuned.decoder.refine[-1].weight.abs().max() > 0  # it trained
    for (name, a), b in zip(base.encoder.state_dict().items(), tuned.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="differs from the config's model"):  # a refiner is never dropped
        run(tmp_path / "c", *patch, "train.max_steps=1", f"train.init_from={tmp_path / 'ft' / 'final'}")


def test_freeze_encoder_needs_init_and_init_must_match(tmp_path):
    with pytest.raises(ValueError, match="freeze_encoder needs train.init_from"):
        run(tmp_path / "a", "train.max_steps=1", "freeze_encoder=true")
    run(tmp_path / "base", "train.max_steps=1", "train.save_every=0", "stats_clips=0")
    with pytest.raises(ValueError, match="differs from the config's model"):
        run(tmp_path / "b", "train.max_steps=1", "model.latent_channels=8",
            f"train.init_from={tmp_path / 'base' / 'final'}")


@pytest.mark.slow
def test_deepspeed_two_ranks_trains_and_resumes(tmp_path):
    """torchrun/deepspeed launch (RANK set): DeepSpeed engine on 2 CPU ranks, then resume from OUT/ds."""
    import os
    import subprocess
    import sys

    def launch(steps):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train_vae.py"]
        for item in [*TINY, f"train.output_dir={tmp_path}", f"train.max_steps={steps}", "train.save_every=2",
                     "stats_clips=2"]:
            cmd += ["--set", item]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)

    launch(2)
    assert (tmp_path / "checkpoints" / "latest").is_file()
    assert (tmp_path / "final" / "model.safetensors").is_file()
    launch(3)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]


def test_anchor_holds_the_anchor_clips_latents_while_the_encoder_trains(tmp_path):
    """anchor_weight: encoder and decoder train, but the anchor clips' normalised latents stay near where
    init_from's encoder put them, much nearer than in the same fine-tune without the anchor."""
    run(tmp_path / "base", "train.max_steps=2", "train.save_every=0")
    init = tmp_path / "base" / "final"
    world = tmp_path / "base" / "world" / "train.jsonl"
    base = load_vae(init)
    common = ["train.max_steps=12", "train.save_every=0", "stats_clips=0", f"train.init_from={init}",
              "train.lr=0.01", f"data.manifest={world}", f"data.anchor_manifest={world}"]
    records = run(tmp_path / "held", *common, "anchor_weight=100")
    assert all("anchor_drift" in r and "anchor_psnr" in r for r in records)
    run(tmp_path / "free", *common)
    held, free = load_vae(tmp_path / "held" / "final"), load_vae(tmp_path / "free" / "final")
    changed = [not torch.equal(a, b) for a, b in zip(base.encoder.parameters(), held.encoder.parameters())]
    assert any(changed)  # the encoder trained
    from data.manifest import read_manifest
    from videodit.video_reader import decode_video

    clips = [torch.from_numpy(decode_video(e.path, num_frames=5)).permute(3, 0, 1, 2)[None].float()
             / 127.5 - 1 for e in read_manifest(world)]

    def drift(vae):
        with torch.no_grad():
            return sum((vae.encode(c) - base.encode(c)).pow(2).mean().item() for c in clips)

    assert drift(held) < 0.3 * drift(free), (drift(held), drift(free))
    assert torch.equal(held.latent_scale, base.latent_scale)  # stats kept


def test_anchor_needs_init_a_manifest_and_a_trainable_encoder(tmp_path):
    with pytest.raises(ValueError, match="needs both"):
        run(tmp_path / "a", "train.max_steps=1", "anchor_weight=1", "stats_clips=0")
    with pytest.raises(ValueError, match="freeze_encoder false and stats_clips 0"):
        run(tmp_path / "b", "train.max_steps=1", "anchor_weight=1", "train.init_from=x",
            "data.anchor_manifest=y")
    with pytest.raises(ValueError, match="anchor_weight must be >= 0"):
        run(tmp_path / "c", "train.max_steps=1", "anchor_weight=-1")
