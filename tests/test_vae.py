"""CausalVAE3D: frame counts, causality, streamed == one-pass, tiling seam bound, bad input."""

import pytest
import torch

from vae3d import CausalConv3d, CausalVAE3D, VAEConfig


def tiny(**kw) -> CausalVAE3D:
    cfg = VAEConfig(base_channels=8, channel_mult=(1, 2, 2), latent_channels=4, **kw)
    return CausalVAE3D(cfg).eval()


def video(f, h=32, w=32, b=1):
    return torch.rand(b, 3, f, h, w) * 2 - 1


@pytest.mark.parametrize("arch", ["conv", "patch"])
@pytest.mark.parametrize("f", [1, 2, 5, 17, 18])
def test_exact_frame_counts(f, arch):
    m = tiny(arch=arch)
    with torch.no_grad():
        z = m.encode(video(f))
        assert z.shape == (1, 4, 1 + -(-(f - 1) // 4), 4, 4)
        assert m.decode(z, num_frames=f).shape == (1, 3, f, 32, 32)
        assert m.decode(z).shape[2] == 1 + (z.shape[2] - 1) * 4


@pytest.mark.parametrize("arch", ["conv", "patch"])
def test_image_path_is_first_frame_of_video(arch):
    m = tiny(arch=arch)
    v = video(9)
    with torch.no_grad():
        z_img = m.encode(v[:, :, :1])
        z_vid = m.encode(v)
        assert z_img.shape[2] == 1
        torch.testing.assert_close(z_img[:, :, 0], z_vid[:, :, 0], atol=1e-5, rtol=0)
        assert m.decode(z_img).shape == (1, 3, 1, 32, 32)


@pytest.mark.parametrize("ts, arch", [(1, "conv"), (2, "conv"), (4, "conv"), (2, "patch"), (4, "patch")])
def test_streamed_equals_one_pass(ts, arch):
    m = tiny(temporal_stride=ts, arch=arch)
    v = video(11, b=2)
    with torch.no_grad():
        z = m.encode(v)
        x = m.decode(z, num_frames=11)
        for chunk in (1, 3, 4, 7):
            assert (m.encode(v, chunk_frames=chunk) - z).abs().max() <= 1e-4
            assert (m.decode(z, num_frames=11, chunk_frames=chunk) - x).abs().max() <= 1e-4
        parts = list(m.decode_stream(z, num_frames=11, chunk_frames=4))
        assert len(parts) > 1
        assert (torch.cat(parts, dim=2) - x).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["conv", "patch"])
def test_causality(arch):
    m = tiny(arch=arch)
    v = video(13)
    v2 = v.clone()
    v2[:, :, 6:] = torch.rand_like(v2[:, :, 6:])  # change frames > 5
    with torch.no_grad():
        z, z2 = m.encode(v), m.encode(v2)
        # latent 0 covers frame 0, latent 1 frames 1..4: both only see frames <= 5
        torch.testing.assert_close(z[:, :, :2], z2[:, :, :2], atol=0, rtol=0)
        assert (z[:, :, 2:] - z2[:, :, 2:]).abs().max() > 1e-4
        zn = z.clone()
        zn[:, :, 2:] = torch.randn_like(zn[:, :, 2:])
        x, xn = m.decode(z), m.decode(zn)
        torch.testing.assert_close(x[:, :, :5], xn[:, :, :5], atol=0, rtol=0)


def test_causal_conv_cache_with_stride():
    conv = CausalConv3d(2, 3, (3, 3, 3), stride=(2, 1, 1))
    x = torch.randn(1, 2, 9, 5, 5)
    y, _ = conv(x)
    assert y.shape[2] == 5
    cache, parts = None, []
    for s in range(9):
        out, cache = conv(x[:, :, s: s + 1], cache)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 2), y, atol=1e-5, rtol=0)


def test_tiling_seam_bound():
    """Tiled encode/decode vs untiled on a 2x3 grid of tiles: the blended seams stay within a bound."""
    m = tiny()
    v = video(5, 192, 256)
    with torch.no_grad():
        z = m.encode(v, tile=0)
        zt = m.encode(v, tile=128)
        x = m.decode(z, tile=0)
        xt = m.decode(z, tile=128)
        assert len(m._tiles(24, 32, 128)[1]) > 1
    enc_err = (zt - z).abs().max() / z.abs().max()
    dec_err = (xt - x).abs().mean() / x.abs().mean()
    # measured on this random-init model: enc 0.14 (max, relative), dec 0.037 (mean, relative)
    assert enc_err < 0.2 and dec_err < 0.05, (enc_err, dec_err)
    assert (xt - x).abs().max() > 0  # the tiles really were separate


def test_patch_arch_tiling_is_exact():
    """arch "patch" sees one latent of context per side, well inside the 64 px overlap: tiles agree."""
    m = tiny(arch="patch")
    v = video(5, 192, 256)
    with torch.no_grad():
        z = m.encode(v, tile=0)
        torch.testing.assert_close(m.encode(v, tile=128), z, atol=1e-5, rtol=0)
        torch.testing.assert_close(m.decode(z, tile=128), m.decode(z, tile=0), atol=1e-5, rtol=0)


def _check_added_decoder_part(base: CausalVAE3D, grown: CausalVAE3D, prefix: str, last: torch.nn.Conv3d):
    """`grown` = `base` + a decoder part whose weights start with `prefix` and end in the zero-initialised
    conv `last`: it loads base's weights, decodes exactly as base, and once `last` is live it changes the
    decode and still streams exactly (per-frame / per-patch parts: chunking changes nothing)."""
    missing, unexpected = grown.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(prefix) for k in missing)
    with torch.no_grad():
        z = base.encode(video(9, 48, 64))
        torch.testing.assert_close(grown.decode(z), base.decode(z), atol=0, rtol=0)
        torch.nn.init.normal_(last.weight, std=0.1)
        x = grown.decode(z, num_frames=9)
        assert (x - base.decode(z, num_frames=9)).abs().max() > 1e-3
        for chunk in (1, 4, 5):
            streamed = grown.decode(z, num_frames=9, chunk_frames=chunk)
            torch.testing.assert_close(streamed, x, atol=1e-5, rtol=0)


def test_refiner_starts_as_identity_then_streams_and_tiles_exactly():
    torch.manual_seed(0)
    refined = tiny(arch="patch", refine_channels=4)
    _check_added_decoder_part(tiny(arch="patch"), refined, "decoder.refine.", refined.decoder.refine[-1])
    with torch.no_grad():
        # Decoder (2 latents = 16 px) + refiner (3 px) reach 3 px past the zero-weight quarter of the 64 px
        # overlap, where the blend ramp is < 0.1: tiles agree closely, not to rounding.
        big = refined.encode(video(5, 192, 256), tile=0)
        tiled = refined.decode(big, tile=128)
        torch.testing.assert_close(tiled, refined.decode(big, tile=0), atol=2e-3, rtol=0)


def test_latent_normalisation_round_trip():
    m = tiny()
    v = video(5)
    with torch.no_grad():
        x0 = m.decode(m.encode(v))
        m.set_latent_stats(torch.linspace(-1, 1, 4), torch.linspace(0.5, 2, 4))
        z = m.encode(v)
        mean, _ = m.encode_moments(v)
        scale, shift = m.latent_scale.view(1, -1, 1, 1, 1), m.latent_shift.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(z * scale + shift, mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(m.decode(z), x0, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        m.set_latent_stats(torch.zeros(4), torch.zeros(4))


def test_forward_shapes():
    m = tiny()
    recon, mean, logvar = m(video(6))
    assert recon.shape == (1, 3, 6, 32, 32) and mean.shape == logvar.shape == (1, 4, 3, 4, 4)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 5, 32, 32), "5 dims"),
        (torch.zeros(1, 4, 5, 32, 32), "channels"),
        (torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8), "float"),
        (torch.zeros(1, 3, 5, 30, 32), "multiples of the spatial stride"),
        (torch.full((1, 3, 5, 32, 32), float("nan")), "NaN"),
    ],
)
def test_bad_video_input(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny().encode(bad)


def test_bad_latent_input():
    m = tiny()
    with pytest.raises(ValueError, match="latent must be"):
        m.decode(torch.zeros(1, 5, 2, 4, 4))
    with pytest.raises(ValueError, match="num_frames=9"):
        m.decode(torch.zeros(1, 4, 2, 4, 4), num_frames=9)
    with pytest.raises(ValueError, match="NaN"):
        m.decode(torch.full((1, 4, 2, 4, 4), float("nan")))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"temporal_stride": 3}, "temporal_stride"),
        ({"spatial_stride": 4}, "spatial_stride"),
        ({"channel_mult": (1, 2)}, "must equal spatial_stride"),
        ({"temporal_stride": 8, "channel_mult": (1, 2, 2)}, "needs 3 downsampling"),
        ({"arch": "unet"}, "arch must be 'conv' or 'patch'"),
        ({"refine_channels": 8}, "only arch 'patch' has a refiner"),
    ],
)
def test_bad_config(kw, match):
    args = {"base_channels": 8, "channel_mult": (1, 2, 2)} | kw
    with pytest.raises(ValueError, match=match):
        VAEConfig(**args)


def test_generator_gan_term_trains_the_autoencoder_not_the_discriminator():
    from vae3d.losses import PatchDiscriminator3D, VAELossConfig, vae_loss

    torch.manual_seed(0)
    disc = PatchDiscriminator3D(4, 2)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    recon = (video + 0.1 * torch.randn_like(video)).requires_grad_(True)
    mean, logvar = torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    loss, logs = vae_loss(recon, video, mean, logvar, VAELossConfig(gan_weight=1.0, gan_start=0), disc)
    loss.backward()
    assert "gan_g" in logs and recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())  # the generator term left the discriminator alone
    assert all(p.requires_grad for p in disc.parameters())  # and it still trains on its own loss


def test_decode_coarse_is_the_decoder_without_its_pixel_refiner_and_differentiable():
    import copy

    torch.manual_seed(0)
    m = tiny(arch="patch", refine_channels=4).eval()
    torch.nn.init.normal_(m.decoder.refine[-1].weight, std=0.5)  # a refiner that changes the picture
    z = torch.randn(1, m.latent_channels, 3, 2, 2, requires_grad=True)
    bare = copy.deepcopy(m)
    bare.decoder.refine = None
    coarse = m.decode_coarse(z)
    torch.testing.assert_close(coarse, bare.decode(z), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(coarse, m.decode(z), atol=1e-3)
    coarse.pow(2).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    conv = tiny().eval()  # the conv decoder has no refiner: decode_coarse is the whole decoder
    zc = torch.randn(1, conv.latent_channels, 2, 2, 2)
    torch.testing.assert_close(conv.decode_coarse(zc), conv.decode(zc), atol=1e-5, rtol=1e-5)
