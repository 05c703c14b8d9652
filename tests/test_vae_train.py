"""train_vae.py: reconstruction loss falls on a tiny run; resume continues from the last checkpoint."""

import json

import pytest
import torch

import train_vae
from vae3d.io import load_vae

TINY = ["model.latent_channels=4", "model.base_channels=8", "model.channel_mult=[1, 2, 2]",
        "data.synthetic_clips=2", "data.synthetic_min_size=32", "data.synthetic_max_size=32",
        "data.max_frames=5", "data.max_tokens=16", "data.image_fraction=0.0", "stats_clips=2",
        "lr=0.003", "log_every=1"]


def run(tmp_path, *extra):
    args = []
    for item in [*TINY, f"out_dir={tmp_path}", *extra]:
        args += ["--set", item]
    return train_vae.main(args)


def test_reconstruction_loss_falls_and_stats_are_stored(tmp_path):
    records = run(tmp_path, "steps=24", "save_every=0")
    first = sum(r["l1"] for r in records[:4]) / 4
    last = sum(r["l1"] for r in records[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    final = load_vae(tmp_path / "final")
    assert not torch.equal(final.latent_scale, torch.ones(4))  # measured, not the default
    assert (final.latent_scale > 0).all()


def test_resume_continues_from_last_checkpoint(tmp_path):
    run(tmp_path, "steps=3", "save_every=2", "stats_clips=0")
    records = run(tmp_path, "steps=5", "save_every=2", "stats_clips=0")
    assert [r["step"] for r in records] == [4, 5]
    state = torch.load(tmp_path / "last" / "train_state.pt", weights_only=True)
    assert state["step"] == 5
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]


def test_gan_phase_runs_and_logs_discriminator(tmp_path):
    records = run(tmp_path, "steps=6", "loss.gan_start=3", "loss.disc_channels=4", "loss.disc_layers=2")
    assert "gan_d" not in records[2] and "gan_d" in records[3]


def test_decoder_finetune_keeps_encoder_and_latent_stats(tmp_path):
    run(tmp_path / "base", "steps=2", "save_every=0")
    base = load_vae(tmp_path / "base" / "final")
    records = run(tmp_path / "ft", "steps=3", "save_every=0", f"init_from={tmp_path / 'base' / 'final'}",
                  "freeze_encoder=true", "loss.mse_weight=1.0")
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
    run(tmp_path / "base", *patch, "steps=1", "save_every=0", "stats_clips=0")
    base = load_vae(tmp_path / "base" / "final")
    run(tmp_path / "ft", *patch, "model.refine_channels=4", "steps=3", "save_every=0", "freeze_encoder=true",
        f"init_from={tmp_path / 'base' / 'final'}")
    tuned = load_vae(tmp_path / "ft" / "final")
    assert tuned.config.refine_channels == 4 and tuned.decoder.refine[-1].weight.abs().max() > 0  # it trained
    for (name, a), b in zip(base.encoder.state_dict().items(), tuned.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="differs from the config's model"):  # a refiner is never dropped
        run(tmp_path / "c", *patch, "steps=1", f"init_from={tmp_path / 'ft' / 'final'}")


def test_decoder_finetune_can_add_refiner_stages_and_an_output_branch(tmp_path):
    patch = ["model.arch=patch", "model.spatial_stride=8", "model.refine_channels=4"]
    run(tmp_path / "base", *patch, "steps=1", "save_every=0", "stats_clips=0")
    base = load_vae(tmp_path / "base" / "final")
    run(tmp_path / "ft", *patch, "model.refine_stages=2", "model.head_channels=8", "steps=3", "save_every=0",
        "freeze_encoder=true", f"init_from={tmp_path / 'base' / 'final'}")
    tuned = load_vae(tmp_path / "ft" / "final")
    assert tuned.config.refine_stages == 2 and tuned.decoder.refine_more[0][-1].weight.abs().max() > 0
    assert tuned.config.head_channels == 8 and tuned.decoder.head[-1].weight.abs().max() > 0
    for (name, a), b in zip(base.encoder.state_dict().items(), tuned.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    for drop in ("model.refine_stages=1", "model.head_channels=0"):  # added parts are never dropped
        with pytest.raises(ValueError, match="differs from the config's model"):
            run(tmp_path / "c", *patch, "model.refine_stages=2", "model.head_channels=8", drop, "steps=1",
                f"init_from={tmp_path / 'ft' / 'final'}")


def test_freeze_encoder_needs_init_and_init_must_match(tmp_path):
    with pytest.raises(ValueError, match="freeze_encoder needs init_from"):
        run(tmp_path / "a", "steps=1", "freeze_encoder=true")
    run(tmp_path / "base", "steps=1", "save_every=0", "stats_clips=0")
    with pytest.raises(ValueError, match="differs from the config's model"):
        run(tmp_path / "b", "steps=1", "model.latent_channels=8", f"init_from={tmp_path / 'base' / 'final'}")


@pytest.mark.slow
def test_deepspeed_two_ranks_trains_and_resumes(tmp_path):
    """torchrun/deepspeed launch (RANK set): DeepSpeed engine on 2 CPU ranks, then resume from OUT/ds."""
    import os
    import subprocess
    import sys

    def launch(steps):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train_vae.py"]
        for item in [*TINY, f"out_dir={tmp_path}", f"steps={steps}", "save_every=2", "stats_clips=2"]:
            cmd += ["--set", item]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)

    launch(2)
    assert (tmp_path / "ds" / "last").is_dir() and (tmp_path / "final" / "model.safetensors").is_file()
    launch(3)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]


def test_encoder_finetune_keeps_decoder(tmp_path):
    run(tmp_path / "base", "steps=2", "save_every=0")
    base = load_vae(tmp_path / "base" / "final")
    run(tmp_path / "ft", "steps=3", "save_every=0", f"init_from={tmp_path / 'base' / 'final'}",
        "freeze_decoder=true")
    tuned = load_vae(tmp_path / "ft" / "final")
    for (name, a), b in zip(base.decoder.state_dict().items(), tuned.decoder.state_dict().values()):
        assert torch.equal(a, b), name
    changed = [not torch.equal(a, b) for a, b in zip(base.encoder.parameters(), tuned.encoder.parameters())]
    assert all(changed)
    with pytest.raises(ValueError, match="freeze_decoder needs init_from"):
        run(tmp_path / "a", "steps=1", "freeze_decoder=true")
    with pytest.raises(ValueError, match="nothing to train"):
        run(tmp_path / "b", "steps=1", "freeze_decoder=true", "freeze_encoder=true",
            f"init_from={tmp_path / 'base' / 'final'}")


def test_decoder_learns_from_dit_latent_pairs(tmp_path):
    """data.pairs: samples are (latent, clip) pairs decoded without the encoder; the decoder learns to turn
    a perturbed latent (a stand-in for the DiT's) back into its clip; the encoder and stats stay."""
    run(tmp_path / "base", "steps=2", "save_every=0")
    base = load_vae(tmp_path / "base" / "final")
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 5, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        latent = base.encode(video)[0]
    wrong = latent + 0.5 * torch.randn(latent.shape, generator=gen)  # what "the DiT" drew
    frames = ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8)  # (F, H, W, 3)
    folder = tmp_path / "pairs"
    folder.mkdir()
    torch.save([{"frames": frames, "latent": wrong.half(), "caption": "x", "strength": 0.5}],
               folder / "pairs-00000.pt")
    target = frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1

    def err(vae):
        with torch.no_grad():
            return (vae.decode(wrong.half().float()[None]) - target).pow(2).mean().item()

    records = run(tmp_path / "ft", "steps=30", "save_every=0", f"init_from={tmp_path / 'base' / 'final'}",
                  "freeze_encoder=true", "loss.mse_weight=1.0", f"data.pairs={folder}",
                  "data.pair_fraction=1.0", "lr=0.01")
    assert all(r["kl"] == 0 for r in records)  # every sample was a pair: no encoder in the loss
    tuned = load_vae(tmp_path / "ft" / "final")
    assert err(tuned) < 0.5 * err(base), (err(base), err(tuned))
    for (name, a), b in zip(base.encoder.state_dict().items(), tuned.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(base.latent_scale, tuned.latent_scale)


def test_pairs_need_a_frozen_encoder_and_a_valid_fraction(tmp_path):
    with pytest.raises(ValueError, match="data.pairs .* needs freeze_encoder"):
        run(tmp_path / "a", "steps=1", "data.pairs=somewhere")
    with pytest.raises(ValueError, match="pair_fraction"):
        run(tmp_path / "b", "steps=1", "data.pair_fraction=1.5")
    run(tmp_path / "base", "steps=1", "save_every=0")
    with pytest.raises(ValueError, match="no pairs-"):
        run(tmp_path / "c", "steps=1", f"init_from={tmp_path / 'base' / 'final'}", "freeze_encoder=true",
            f"data.pairs={tmp_path}")


def test_anchor_holds_the_anchor_clips_latents_while_the_encoder_trains(tmp_path):
    """anchor_weight: encoder and decoder train, but the anchor clips' normalised latents stay near where
    init_from's encoder put them, much nearer than in the same fine-tune without the anchor."""
    run(tmp_path / "base", "steps=2", "save_every=0")
    init = tmp_path / "base" / "final"
    world = tmp_path / "base" / "world" / "train.jsonl"
    base = load_vae(init)
    common = ["steps=12", "save_every=0", "stats_clips=0", f"init_from={init}", "lr=0.01",
              f"data.manifest={world}", f"data.anchor_manifest={world}"]
    records = run(tmp_path / "held", *common, "anchor_weight=100")
    assert all("anchor_drift" in r and "anchor_psnr" in r for r in records)
    run(tmp_path / "free", *common)
    held, free = load_vae(tmp_path / "held" / "final"), load_vae(tmp_path / "free" / "final")
    changed = [not torch.equal(a, b) for a, b in zip(base.encoder.parameters(), held.encoder.parameters())]
    assert any(changed)  # the encoder trained
    from data.decode import decode_video
    from data.manifest import read_manifest

    clips = [torch.from_numpy(decode_video(e.path, num_frames=5)).permute(3, 0, 1, 2)[None].float()
             / 127.5 - 1 for e in read_manifest(world)]

    def drift(vae):
        with torch.no_grad():
            return sum((vae.encode(c) - base.encode(c)).pow(2).mean().item() for c in clips)

    assert drift(held) < 0.3 * drift(free), (drift(held), drift(free))
    assert torch.equal(held.latent_scale, base.latent_scale)  # stats kept


def test_anchor_needs_init_a_manifest_and_a_trainable_encoder(tmp_path):
    with pytest.raises(ValueError, match="needs both"):
        run(tmp_path / "a", "steps=1", "anchor_weight=1", "stats_clips=0")
    with pytest.raises(ValueError, match="freeze_encoder false and stats_clips 0"):
        run(tmp_path / "b", "steps=1", "anchor_weight=1", "init_from=x", "data.anchor_manifest=y")
    with pytest.raises(ValueError, match="anchor_weight must be >= 0"):
        run(tmp_path / "c", "steps=1", "anchor_weight=-1")


def test_fine_tune_can_add_linear_paths(tmp_path):
    run(tmp_path / "base", "steps=2", "model.arch=patch", "save_every=0")
    run(tmp_path / "ft", "model.arch=patch", "model.linear_skip=true", "steps=3", "save_every=0",
        "stats_clips=0", f"init_from={tmp_path / 'base' / 'final'}")
    tuned = load_vae(tmp_path / "ft" / "final")
    assert tuned.config.linear_skip
    assert tuned.encoder.skip.weight.abs().max() > 0 and tuned.decoder.skip.weight.abs().max() > 0


def test_pca_init_makes_a_fresh_patch_vae_the_pca_codec():
    """After pca_init the untrained model reconstructs every clip exactly as the PCA of its patches does."""
    from einops import rearrange

    from vae3d import CausalVAE3D, VAEConfig

    torch.manual_seed(0)
    model = CausalVAE3D(VAEConfig(arch="patch", latent_channels=3, base_channels=16, temporal_stride=2,
                                  spatial_stride=8, linear_skip=True, refine_channels=8))
    # smooth random clips (low-rank-ish patches), 1 + 2k frames
    clips = [torch.nn.functional.interpolate(torch.rand(1, 3, 3, 4, 4), size=(5, 16, 24), mode="trilinear")[0]
             * 2 - 1 for _ in range(6)]
    share = train_vae.pca_init(model, iter(clips), 6)
    assert 0 < share <= 1
    patches = []
    for x in clips:
        x = torch.cat([x[:, :1], x], dim=1)[None]  # the first frame replicated ts - 1 = 1 time
        patches.append(rearrange(x, "b c (t pt) (h p1) (w p2) -> (b t h w) (c pt p1 p2)", pt=2, p1=8, p2=8))
    p = torch.cat(patches).double()
    mu = p.mean(0)
    _, evecs = torch.linalg.eigh((p - mu).T @ (p - mu))
    e = evecs[:, -3:]
    for x, own in zip(clips, patches):
        want = mu + ((own.double() - mu) @ e) @ e.T  # PCA reconstruction of the clip's patches
        want = rearrange(want.float(), "(b t h w) (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", b=1, t=3, h=2,
                         w=3, pt=2, p1=8, p2=8)[:, :, 1:]  # drop the replicated frame
        with torch.no_grad():
            recon, _, _ = model(x[None], sample=False)
        torch.testing.assert_close(recon, want, atol=1e-4, rtol=1e-4)


def test_pca_init_needs_a_fresh_patch_vae_with_linear_paths(tmp_path):
    with pytest.raises(ValueError, match="init_pca_clips"):
        run(tmp_path, "steps=1", "model.arch=patch", "init_pca_clips=2")  # no linear_skip
    records = run(tmp_path / "ok", "steps=3", "model.arch=patch", "model.linear_skip=true",
                  "init_pca_clips=2", "save_every=0")
    assert len(records) == 3
