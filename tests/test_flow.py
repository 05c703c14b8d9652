"""Rectified-flow objective: shift schedule, timestep sampling, loss against a hand computation."""

import math
from types import SimpleNamespace

import pytest
import torch

from videodit.flow import (
    X0_T_FLOOR,
    FlowConfig,
    flow_loss,
    interpolate,
    sample_timesteps,
    shift_mu,
    shift_timesteps,
    timestep_shift,
    to_velocity,
)
from videodit.patchify import spacetime_patchify

PATCH = (1, 2, 2)


class RecordingModel:
    """Stand-in for VideoDiT.forward_packed: prediction = scale * input tokens; records its inputs."""

    def __init__(self, scale: float = 0.5):
        self.config = SimpleNamespace(patch=PATCH)
        self.scale = scale
        self.calls = []

    def forward_packed(self, packed, timesteps):
        self.calls.append((packed, timesteps.clone()))
        return self.scale * packed.tokens


def test_shift_monotone_in_token_count():
    cfg = FlowConfig()
    counts = [1, 16, 256, 257, 1000, 4096, 10000, 16384, 10**6]
    shifts = [timestep_shift(n, cfg) for n in counts]
    assert all(a <= b for a, b in zip(shifts, shifts[1:]))
    inside = [timestep_shift(n, cfg) for n in (256, 1000, 4096, 10000, 16384)]
    assert all(a < b for a, b in zip(inside, inside[1:]))  # strictly increasing inside the range
    assert shifts[2] == pytest.approx(math.exp(cfg.base_shift))
    assert shifts[7] == pytest.approx(math.exp(cfg.max_shift))
    assert shift_mu((256 + 16384) // 2, cfg) == pytest.approx((cfg.base_shift + cfg.max_shift) / 2)
    assert timestep_shift(10**6, FlowConfig(shift=False)) == 1.0


def test_shift_timesteps_maps_unit_interval_and_pushes_up():
    t = torch.linspace(0, 1, 11)
    for s in (1.0, 2.0, 5.0):
        out = shift_timesteps(t, s)
        assert out[0] == 0 and out[-1] == pytest.approx(1.0)
        assert torch.all(out[1:] >= out[:-1])
        assert torch.all(out >= t - 1e-7)
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)
    assert shift_timesteps(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)


def test_sample_timesteps_logit_normal_and_shifted():
    cfg = FlowConfig(shift=False)
    t = sample_timesteps([100] * 20000, cfg, torch.Generator().manual_seed(0))
    u = torch.logit(t.double())
    assert abs(u.mean().item()) < 0.03 and abs(u.std().item() - 1.0) < 0.03
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    small = sample_timesteps([64] * 4000, FlowConfig(), g1)
    big = sample_timesteps([16384] * 4000, FlowConfig(), g2)
    assert torch.all(big >= small)  # same draws, larger shift
    assert big.mean() > small.mean() + 0.1


def test_sample_timesteps_uniform_share_reaches_low_noise():
    n = 20000
    skewed = FlowConfig(logit_mean=1.0)  # shifted (1.65x at 256 tokens): low noise almost never drawn
    base = sample_timesteps([256] * n, skewed, torch.Generator().manual_seed(0))
    assert (base < 0.3).float().mean().item() < 0.02
    off = FlowConfig(logit_mean=1.0, uniform_fraction=0.0)
    torch.testing.assert_close(base, sample_timesteps([256] * n, off, torch.Generator().manual_seed(0)))
    mixed = sample_timesteps([256] * n, FlowConfig(logit_mean=1.0, uniform_fraction=0.3),
                             torch.Generator().manual_seed(0))
    expected = 0.3 * 0.3 + 0.7 * (base < 0.3).float().mean().item()
    assert (mixed < 0.3).float().mean().item() == pytest.approx(expected, abs=0.012)
    flat = sample_timesteps([256] * n, FlowConfig(logit_mean=1.0, uniform_fraction=1.0),
                            torch.Generator().manual_seed(1))
    for q in (0.1, 0.5, 0.9):  # U(0, 1), unshifted
        assert (flat < q).float().mean().item() == pytest.approx(q, abs=0.012)
    assert 0 < flat.min() and flat.max() < 1


def test_flow_config_validation():
    with pytest.raises(ValueError, match="max_tokens"):
        FlowConfig(base_tokens=100, max_tokens=50)
    with pytest.raises(ValueError, match="text_drop_prob"):
        FlowConfig(text_drop_prob=1.5)
    with pytest.raises(ValueError, match="logit_std"):
        FlowConfig(logit_std=0.0)
    with pytest.raises(ValueError, match="uniform_fraction"):
        FlowConfig(uniform_fraction=-0.1)


def _clips():
    g = torch.Generator().manual_seed(1)
    return (
        [torch.randn(4, 3, 4, 6, generator=g), torch.randn(4, 1, 2, 2, generator=g)],  # 18 and 1 tokens
        [torch.randn(5, 8, generator=g), torch.randn(2, 8, generator=g)],
    )


def test_flow_loss_matches_hand_computation():
    latents, texts = _clips()
    model = RecordingModel(scale=0.5)
    cfg = FlowConfig(text_drop_prob=0.0)
    loss, per_sample = flow_loss(model, latents, texts, cfg, torch.Generator().manual_seed(0))
    packed, t = model.calls[0]
    assert t.shape == (2,) and torch.all((t > 0) & (t < 1))
    # recover each sample's noise from the model input and recompute the loss by hand
    offsets = packed.cu_seqlens.tolist()
    expected = []
    for i, z in enumerate(latents):
        x0, _ = spacetime_patchify(z, PATCH)  # (L_i, D_in)
        xt = packed.tokens[offsets[i] : offsets[i + 1]]
        noise = (xt - (1 - t[i]) * x0) / t[i]
        v = noise - x0
        expected.append(((0.5 * xt - v) ** 2).mean())
        # the noise really is fresh Gaussian noise, not the data
        assert not torch.allclose(noise, x0)
    expected = torch.stack(expected)
    torch.testing.assert_close(per_sample, expected, atol=1e-5, rtol=1e-5)
    # per-sample mean, not a token mean: the 1-token sample counts as much as the 18-token one
    torch.testing.assert_close(loss, expected.mean(), atol=1e-6, rtol=1e-6)
    token_mean = (expected[0] * 18 + expected[1] * 1) / 19
    assert not torch.isclose(loss, token_mean)
    # text kept: the packed text is the concatenation of both prompts
    assert packed.text.shape == (7, 8)


def test_flow_loss_deterministic_for_generator_and_text_drop():
    latents, texts = _clips()
    a = flow_loss(RecordingModel(), latents, texts, FlowConfig(), torch.Generator().manual_seed(5))
    b = flow_loss(RecordingModel(), latents, texts, FlowConfig(), torch.Generator().manual_seed(5))
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    model = RecordingModel()
    flow_loss(model, latents, texts, FlowConfig(text_drop_prob=1.0), torch.Generator().manual_seed(5))
    packed, _ = model.calls[0]
    assert packed.text.shape[0] == 0
    assert packed.text_cu_seqlens.tolist() == [0, 0, 0]


def test_flow_loss_with_token_drop_uses_same_tokens_for_targets():
    latents, texts = _clips()
    model = RecordingModel(scale=0.0)  # pred = 0 -> per-sample loss = mean(v^2) over kept tokens
    cfg = FlowConfig(text_drop_prob=0.0)
    _, per_sample = flow_loss(model, latents, texts, cfg, torch.Generator().manual_seed(0), drop_rate=0.5)
    packed, t = model.calls[0]
    assert packed.seqlens == [9, 1]
    offsets = packed.cu_seqlens.tolist()
    for i, z in enumerate(latents):
        x0, _ = spacetime_patchify(z, PATCH)
        x0 = x0[packed.keep[i]]  # only the kept tokens
        xt = packed.tokens[offsets[i] : offsets[i + 1]]
        v = (xt - x0) / t[i]  # noise - x0 = (x_t - x0) / t
        assert per_sample[i].item() == pytest.approx((v**2).mean().item(), rel=1e-4)


def test_interpolate_endpoints():
    x0, noise = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(interpolate(x0, noise, 0.0), x0)
    torch.testing.assert_close(interpolate(x0, noise, 1.0), noise)


def test_tiny_videodit_overfits_one_clip():
    """60 Adam steps of a tiny VideoDiT on one clip (fresh noise and t each step): the loss falls."""
    from videodit.model import DiTConfig, VideoDiT

    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(in_channels=4, text_dim=8, hidden_size=32, depth=2, num_heads=2))
    clip = [torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))]
    text = [torch.randn(3, 8)]
    cfg = FlowConfig(text_drop_prob=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, _ = flow_loss(model, clip * 4, text * 4, cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.75 * first, (first, last)  # starts at E|noise - x0|^2 = 2 (zero-init output)


def test_to_velocity_turns_an_exact_x0_into_the_exact_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    t = torch.tensor([0.05, 0.2, 0.5, 0.9, 1.0])[:, None]  # (N, 1) per token
    x_t = interpolate(x0, noise, t)
    torch.testing.assert_close(to_velocity(x0, x_t, t, "x0"), noise - x0, atol=1e-4, rtol=1e-4)
    assert to_velocity(x0, x_t, t, "velocity") is x0  # a velocity head passes through
    # below the floor the denominator is clipped: v = (x_t - x0) / X0_T_FLOOR, finite at t = 0
    v = to_velocity(x0, x0, 0.0, "x0")
    assert torch.all(v == 0) and X0_T_FLOOR == 0.05
    with pytest.raises(ValueError, match="prediction"):
        to_velocity(x0, x_t, t, "eps")


class X0Oracle:
    """An x0-predicting stand-in that knows the clean latents of the batch it is given."""

    def __init__(self, clean):
        self.config = SimpleNamespace(patch=PATCH, prediction="x0")
        self.clean = clean

    def forward_packed(self, packed, timesteps):
        from videodit.packing import pack_like

        return pack_like(packed, self.clean)


def test_flow_loss_x0_head_is_zero_for_the_true_x0_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    lat = [torch.randn(4, 2, 4, 6, generator=g), torch.randn(4, 1, 2, 2, generator=g)]
    txt = [torch.randn(3, 8), torch.randn(2, 8)]
    cfg = FlowConfig(logit_mean=-1.0, text_drop_prob=0.0)  # t mostly well above the 0.05 floor
    loss, per = flow_loss(X0Oracle(lat), lat, txt, cfg, torch.Generator().manual_seed(2))
    t = sample_timesteps([12, 1], cfg, torch.Generator().manual_seed(2))
    assert torch.all(t > X0_T_FLOOR)
    assert loss.item() < 1e-8 and per.shape == (2,)
    wrong = [z + 0.5 for z in lat]
    loss_wrong, _ = flow_loss(X0Oracle(wrong), lat, txt, cfg, torch.Generator().manual_seed(2))
    assert loss_wrong.item() > 0.2  # 0.5^2 / t^2 with t < 1


def test_flow_loss_pixel_term_decodes_the_x0_prediction_of_chosen_samples():
    g = torch.Generator().manual_seed(1)
    lat = [torch.randn(4, 2, 4, 6, generator=g), torch.randn(4, 1, 2, 2, generator=g)]
    txt = [torch.randn(3, 8), torch.randn(2, 8)]
    decoded = []

    def decoder(z):  # a stand-in "decoder": records what it decodes, doubles it
        decoded.append(z.detach().clone())
        return 2 * z

    plain = FlowConfig(logit_mean=-1.0, text_drop_prob=0.0)
    pixel = FlowConfig(logit_mean=-1.0, text_drop_prob=0.0, pixel_weight=3.0, pixel_samples=2)
    # the true x0: the pixel term is 0 as well, and both clean latents are decoded twice (target, prediction)
    gen = torch.Generator().manual_seed
    loss, _ = flow_loss(X0Oracle(lat), lat, txt, pixel, gen(2), pixel_decoder=decoder)
    assert loss.item() < 1e-8 and len(decoded) == 4
    for z in decoded:
        assert any(z.shape[1:] == c.shape and torch.allclose(z[0], c, atol=1e-6) for c in lat)
    # an x0 off by 0.5 everywhere: pixel MSE = (2 * 0.5)^2 = 1, weighted 3, on top of the latent loss
    wrong = [z + 0.5 for z in lat]
    base, per = flow_loss(X0Oracle(wrong), lat, txt, plain, torch.Generator().manual_seed(2))
    with_px, per_px = flow_loss(X0Oracle(wrong), lat, txt, pixel, torch.Generator().manual_seed(2),
                                pixel_decoder=decoder)
    assert with_px.item() == pytest.approx(base.item() + 3.0, rel=1e-5)
    torch.testing.assert_close(per_px, per)  # per-sample figures stay the latent loss
    # no sample at t <= pixel_max_t: no term; token drop is refused with it on
    none = FlowConfig(logit_mean=-1.0, text_drop_prob=0.0, pixel_weight=3.0, pixel_max_t=1e-6)
    off, _ = flow_loss(X0Oracle(wrong), lat, txt, none, gen(2), pixel_decoder=decoder)
    assert off.item() == pytest.approx(base.item(), rel=1e-6)
    with pytest.raises(ValueError, match="token drop"):
        flow_loss(X0Oracle(wrong), lat, txt, pixel, gen(2), 0.5, pixel_decoder=decoder)
    for bad in ({"pixel_weight": -1.0}, {"pixel_max_t": 0.0}, {"pixel_samples": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FlowConfig(**bad)


def test_conditioning_frames_stay_clean_carry_t0_and_leave_the_loss():
    """i2v-style conditioning: frame 0 of sample 0 is given. Its tokens enter clean with t = 0, and the
    loss does not see what the model predicts for them."""
    from videodit.model import DiTConfig, VideoDiT
    from videodit.packing import pack

    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)]
    txt = [torch.randn(2, 8), torch.randn(2, 8)]
    cond = [torch.tensor([True, False, False]), torch.zeros(3, dtype=torch.bool)]
    model = VideoDiT(DiTConfig(in_channels=4, text_dim=8, hidden_size=24, depth=1, num_heads=4,
                               patch=(2, 2, 2), causal_tubelet=True))
    seen = {}

    def spy(packed, timesteps, token_timesteps=None):
        seen.update(packed=packed, token_t=token_timesteps)
        out = torch.zeros_like(packed.tokens)
        return torch.where(token_timesteps[:, None] == 0, 1e6, out)  # garbage only where conditioning

    model.forward_packed = spy
    cfg = FlowConfig(text_drop_prob=0.0)
    loss, per = flow_loss(model, lat, txt, cfg, torch.Generator().manual_seed(1), cond_frames=cond)
    assert torch.isfinite(loss) and per.max() < 1e3
    clean = pack(lat, txt, (2, 2, 2), causal=True).tokens
    first = seen["packed"].sample_id == 0
    group0 = first & (seen["packed"].pos[:, 0] == 0)
    assert torch.equal(seen["packed"].tokens[group0], clean[group0])  # clean in x_t
    assert (seen["token_t"][group0] == 0).all() and (seen["token_t"][~group0] > 0).all()
    with pytest.raises(ValueError, match="every sample needs a latent frame to denoise"):
        flow_loss(model, lat[:1], txt[:1], cfg, None, cond_frames=[torch.ones(3, dtype=torch.bool)])
