"""save_vae / load_vae round trips and the diffusers adapters on tiny random-init models."""

import json

import pytest
import torch

from vae3d import CausalVAE3D, VAEConfig
from vae3d.adapters import DiffusersVAEAdapter
from vae3d.io import load_vae, save_vae


def test_save_load_round_trip(tmp_path):
    m = CausalVAE3D(VAEConfig(base_channels=8, channel_mult=(1, 2, 2), latent_channels=4)).eval()
    m.set_latent_stats(torch.arange(4.0), torch.full((4,), 2.0))
    save_vae(m, tmp_path / "vae")
    save_vae(m, tmp_path / "vae")  # overwriting an existing folder is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["vae", (tmp_path / "vae").resolve().name])
    loaded = load_vae(tmp_path / "vae")
    assert loaded.config == m.config and loaded.is_random_init is False
    v = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(v), m.encode(v), atol=0, rtol=0)
    torch.testing.assert_close(loaded.latent_shift, torch.arange(4.0))


def test_load_default_and_errors(tmp_path):
    m = load_vae("default")
    assert m.temporal_stride == 4 and m.spatial_stride == 8 and m.latent_channels == 16
    if m.is_random_init:
        assert m.config == VAEConfig()
    with pytest.raises(ValueError, match="not 'default'"):
        load_vae(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="unsupported VAE class"):
        load_vae(tmp_path)


def _tiny_diffusers(name):
    import diffusers

    if name == "AutoencoderKLWan":
        return diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                          temperal_downsample=[False, True, True],
                                          latents_mean=[0.1] * 4, latents_std=[2.0] * 4)
    if name == "AutoencoderKLCogVideoX":
        return diffusers.AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4,
                                                layers_per_block=1, norm_num_groups=4)
    if name == "AutoencoderKLHunyuanVideo":
        return diffusers.AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                                   layers_per_block=1, norm_num_groups=4)
    return diffusers.AutoencoderKLLTXVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                           decoder_block_out_channels=(8, 8, 8, 8),
                                           layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
                                           patch_size=1, patch_size_t=1)


@pytest.mark.parametrize(
    "name, ts", [("AutoencoderKLWan", 4), ("AutoencoderKLCogVideoX", 4), ("AutoencoderKLHunyuanVideo", 4),
                 ("AutoencoderKLLTXVideo", 8)]
)
def test_diffusers_adapter(tmp_path, name, ts):
    _tiny_diffusers(name).save_pretrained(tmp_path / "vae")
    m = load_vae(tmp_path)  # a pipeline-style folder with vae/ inside
    assert isinstance(m, DiffusersVAEAdapter) and m.temporal_stride == ts and m.spatial_stride == 8
    f = 2 * ts - 1  # pads to 1 + 2 * ts frames -> 3 latent frames
    v = torch.rand(1, 3, f, 16, 16) * 2 - 1
    with torch.no_grad():
        z = m.encode(v)
        assert z.shape == (1, m.latent_channels, 3, 2, 2)
        x = m.decode(z, num_frames=f)
        assert x.shape == (1, 3, f, 16, 16)
        torch.testing.assert_close(torch.cat(list(m.decode_stream(z, num_frames=f, chunk_frames=3)), 2), x)
        raw = m.vae.encode(torch.cat([v, v[:, :, -1:].expand(-1, -1, 2, -1, -1)], 2)).latent_dist.mean
        shift, scale = m.latent_shift.view(1, -1, 1, 1, 1), m.latent_scale.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(z * scale + shift, raw, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        m.encode(torch.full((1, 3, 5, 16, 16), float("nan")))
