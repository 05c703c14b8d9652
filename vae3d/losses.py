"""VAE training losses: L1, KL, per-frame SSIM, and a 3D patch-GAN (hinge) discriminator.

No pretrained perceptual network (LPIPS/VGG) can be downloaded here; SSIM (local luminance, contrast
and structure) plus the optional patch-GAN stand in for the perceptual term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class VAELossConfig:
    l1_weight: float = 1.0
    mse_weight: float = 0.0  # squared error: weighs large errors (a small object's wrong colour) more than L1
    kl_weight: float = 1e-6  # on the mean per-element KL to N(0, 1)
    ssim_weight: float = 0.2  # on (1 - SSIM), SSIM computed per frame
    gan_weight: float = 0.1  # generator hinge term, once step >= gan_start
    gan_start: int = -1  # -1: no discriminator; else the optimizer step at which the patch-GAN starts
    disc_channels: int = 32
    disc_layers: int = 3
    disc_lr: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("l1_weight", "mse_weight", "kl_weight", "ssim_weight", "gan_weight", "disc_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.gan_start < -1:
            raise ValueError(f"loss.gan_start must be -1 (off) or a step >= 0, got {self.gan_start}")
        if self.disc_channels < 1 or self.disc_layers < 1:
            raise ValueError(f"disc_channels and disc_layers must be >= 1, got "
                             f"{self.disc_channels}, {self.disc_layers}")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of videos (B, C, F, H, W) in [-1, 1], computed per frame with a Gaussian window."""
    a = rearrange(x, "b c f h w -> (b f) c h w").add(1).mul(0.5)  # (B*F, C, H, W) in [0, 1]
    b = rearrange(y, "b c f h w -> (b f) c h w").add(1).mul(0.5)
    size = min(window, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2  # odd
    c = a.shape[1]
    k = _gaussian_window(size, sigma, a.device, a.dtype).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for signals in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(x.float(), y.float())
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


class PatchDiscriminator3D(nn.Module):
    """3D patch-GAN: (B, 3, F, H, W) -> logits (B, 1, F, H / 2**layers, W / 2**layers)."""

    def __init__(self, channels: int = 32, layers: int = 3, in_channels: int = 3):
        super().__init__()
        k, st, pad = (3, 4, 4), (1, 2, 2), (1, 1, 1)
        mods: list[nn.Module] = [nn.Conv3d(in_channels, channels, k, st, pad), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv3d(c, c * 2, k, st, pad), nn.GroupNorm(1, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv3d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def disc_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def vae_loss(recon: torch.Tensor, video: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             cfg: VAELossConfig, disc: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Generator-side loss -> (scalar, logs). `disc` given: adds the hinge generator term."""
    l1 = (recon - video).abs().mean()
    kl = kl_divergence(mean, logvar)
    s = ssim(recon, video) if cfg.ssim_weight > 0 else recon.new_ones(())
    loss = cfg.l1_weight * l1 + cfg.kl_weight * kl + cfg.ssim_weight * (1 - s)
    logs = {"l1": l1.item(), "kl": kl.item(), "ssim": s.item()}
    if cfg.mse_weight > 0:
        mse = (recon - video).pow(2).mean()
        loss = loss + cfg.mse_weight * mse
        logs["mse"] = mse.item()
    if disc is not None:
        # The generator term trains the autoencoder only: with the discriminator's parameters frozen for this
        # forward, backward leaves their .grad alone (else it would push the discriminator towards calling
        # reconstructions real, on top of its own hinge loss).
        flags = [p.requires_grad for p in disc.parameters()]
        disc.requires_grad_(False)
        try:
            g = -disc(recon).mean()
        finally:
            for p, flag in zip(disc.parameters(), flags):
                p.requires_grad_(flag)
        loss = loss + cfg.gan_weight * g
        logs["gan_g"] = g.item()
    logs["loss"] = loss.item()
    return loss, logs
