"""The embedded default: export round trip, and the shipped weights load and generate."""

import json
from pathlib import Path

import pytest
import torch

import generate
from vae3d.config import VAEConfig
from vae3d.io import load_vae, save_vae
from vae3d.model import CausalVAE3D
from videodit.checkpoint import load_dit, save_dit
from videodit.export_default import export_default
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import read_mp4


def test_export_default_halves_weights_and_rewrites_meta(tmp_path):
    torch.manual_seed(0)
    vae = CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1)))
    vae.set_latent_stats(torch.full((4,), 0.123456789), torch.full((4,), 2.0))
    save_vae(vae, tmp_path / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, hidden_size=24, depth=1, num_heads=2))
    for p in dit.parameters():
        p.data.normal_()
    save_dit(dit, tmp_path / "dit", {"vae": str(tmp_path / "vae"), "flow": {"max_tokens": 4096}})

    export_default(tmp_path / "dit", tmp_path / "vae", {"steps": 7},
                   tmp_path / "out_dit", tmp_path / "out_vae")

    shipped, meta = load_dit(tmp_path / "out_dit")
    assert meta["vae"] == "default" and meta["sampling"] == {"steps": 7}
    assert meta["flow"] == {"max_tokens": 4096}
    assert meta["random_init"] is False
    for (name, a), b in zip(dit.state_dict().items(), shipped.state_dict().values()):
        assert b.dtype == torch.float32, name
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)
    stored = json.loads((tmp_path / "out_vae" / "config.json").read_text())
    assert stored["_class_name"] == "CausalVAE3D"
    vae2 = load_vae(tmp_path / "out_vae")
    assert vae2.latent_shift[0].item() == torch.tensor(0.123456789).item()  # kept in float32


def test_shipped_default_loads_and_generates(tmp_path, capsys):
    dit, meta = load_dit("default")
    vae = load_vae("default")
    assert not meta["random_init"] and not vae.is_random_init, "no trained default is shipped"
    assert vae.latent_channels == dit.config.in_channels
    out = tmp_path / "clip.mp4"
    rc = generate.main(["--prompt", "a red ball moving right on a black background", "--frames", "9",
                        "--res", "64x96", "--steps", "2", "--out", str(out)])
    assert rc == 0
    frames = read_mp4(out)
    assert frames.shape == (9, 64, 96, 3)
    assert "RANDOM" not in capsys.readouterr().out


def test_shipped_default_samples_the_recorded_latent(tmp_path):
    """The embedded default, asked for a fixed request (its recorded CFG and sampler, 4 steps), samples the
    latent recorded for it: sum, absolute sum and every 4th row and column of each latent frame."""
    from videodit.pipeline import load_pipeline, sample_latents, sampling_settings
    from videodit.video_request import VideoRequest

    ref = json.loads((Path(__file__).parent / "default_latent_reference.json").read_text())
    r = ref["request"]
    pipe = load_pipeline("default", device="cpu")
    request = VideoRequest(r["prompt"], r["frames"], *r["res"], r["seed"], "", tmp_path / "x.mp4")
    z = sample_latents(pipe, [request], sampling_settings(pipe.meta, steps=r["steps"]), progress=False)[0]
    assert list(z.shape) == ref["shape"]
    got = z[:, :, ::4, ::4].flatten()
    torch.testing.assert_close(got, torch.tensor(ref["slice"]), atol=1e-3, rtol=0)
    assert z.double().sum().item() == pytest.approx(ref["sum"], rel=1e-4)
    assert z.double().abs().sum().item() == pytest.approx(ref["abs_sum"], rel=1e-4)
