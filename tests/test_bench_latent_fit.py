"""bench.vae_latent_fit: fitting the latent to a frozen decoder lowers the error; the VAE is unchanged."""

import torch

from bench.vae_latent_fit import fit_latent
from vae3d import CausalVAE3D, VAEConfig
from vae3d.losses import psnr


def test_fit_latent_lowers_the_reconstruction_error_and_freezes_nothing_else():
    torch.manual_seed(0)
    vae = CausalVAE3D(VAEConfig(arch="patch", base_channels=16, latent_channels=4)).eval()
    vae.requires_grad_(False)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z0, z = fit_latent(vae, x, steps=60, lr=0.1)
    assert z.shape == z0.shape and not z.requires_grad
    with torch.no_grad():
        p0, p1 = psnr(vae.decode(z0, num_frames=5), x), psnr(vae.decode(z, num_frames=5), x)
    assert p1.item() > p0.item() + 0.1
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(v, before[k])
