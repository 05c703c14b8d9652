"""Sampler: schedulers against reference loops, exact Gaussian flow, CFG, determinism, packing."""

from types import SimpleNamespace

import pytest
import torch

from videodit.flow import FlowConfig, timestep_shift
from videodit.sampling import Request, initial_noise, make_scheduler, sample

PATCH = (1, 2, 2)
C = 4
A = 0.5  # data std of the stand-in's Gaussian world


def text_mean(text: torch.Tensor) -> float:
    """The stand-in world: a prompt's videos are N(m, A^2) per element, m from the prompt; no text -> 0."""
    return 0.0 if text.shape[0] == 0 else float(torch.tanh(text.float().mean() * 3))


class GaussianModel:
    """Stand-in with VideoDiT.forward_samples' signature predicting the EXACT velocity E[noise - x0 | x_t]
    for data x0 ~ N(m, A^2), so the probability-flow ODE has a closed-form solution."""

    def __init__(self):
        self.config = SimpleNamespace(patch=PATCH, in_channels=C)
        self.calls = []

    def forward_samples(self, latents, timesteps, text_embeds):
        assert len(latents) == len(timesteps) == len(text_embeds)
        self.calls.append([tuple(z.shape) for z in latents])
        out = []
        for x, t, e in zip(latents, timesteps.tolist(), text_embeds):
            m = text_mean(e)
            var = (1 - t) ** 2 * A**2 + t**2
            centred = x - (1 - t) * m
            x0 = m + (1 - t) * A**2 / var * centred
            n = t / var * centred
            out.append(n - x0)
        return out


def exact_solution(noise: torch.Tensor, m: float) -> torch.Tensor:
    """ODE from t=1 (noise) to t=0 for the Gaussian world: x_0 = m + A * noise."""
    return m + A * noise


def reference_euler(
    model, req: Request, steps: int, guidance: float, interval: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Plain Euler on the request's shifted sigmas, written out by hand (no diffusers step)."""
    sched = make_scheduler("euler", _shift(req), steps)
    x = initial_noise(C, req.size, req.seed)
    uncond = req.text[:0] if req.negative is None else req.negative
    for k in range(steps):
        s, s_next = float(sched.sigmas[k]), float(sched.sigmas[k + 1])
        t = torch.tensor([s])
        v = model.forward_samples([x], t, [req.text])[0]
        if guidance != 1 and interval[0] <= s <= interval[1]:
            vu = model.forward_samples([x], t, [uncond])[0]
            v = vu + guidance * (v - vu)
        x = x + (s_next - s) * v
    return x


def _shift(req: Request) -> float:
    T, h, w = req.size
    return timestep_shift(T * -(-h // 2) * -(-w // 2), FlowConfig())


def _text(value: float, length: int = 3) -> torch.Tensor:
    return torch.full((length, 8), value)


def test_scheduler_shift_is_per_request():
    small = make_scheduler("euler", _shift(Request((1, 2, 2), _text(0))), 10)
    big = make_scheduler("euler", _shift(Request((16, 64, 64), _text(0))), 10)
    assert torch.all(big.sigmas[1:-1] > small.sigmas[1:-1])
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        make_scheduler("ddim", 1.0, 10)


def test_euler_equals_hand_written_loop_with_and_without_cfg():
    model = GaussianModel()
    reqs = [
        Request((2, 4, 6), _text(0.3), seed=1),
        Request((1, 2, 2), _text(-0.2), seed=2, negative=_text(0.5, 2)),
    ]
    for guidance in (1.0, 4.0):
        got = sample(model, reqs, steps=6, sampler="euler", guidance=guidance, progress=False)
        for r, z in zip(reqs, got):
            torch.testing.assert_close(z, reference_euler(model, r, 6, guidance), atol=1e-5, rtol=1e-5)


def test_guidance_interval_guides_only_inside_it_and_skips_unconditional_passes():
    reqs = [Request((2, 4, 4), _text(0.5), seed=1), Request((1, 6, 2), _text(-0.3), seed=2)]
    counting = GaussianModel()
    calls = []
    forward = counting.forward_samples
    counting.forward_samples = lambda xs, t, es: calls.append(len(xs)) or forward(xs, t, es)
    got = sample(counting, reqs, steps=8, sampler="euler", guidance=4.0, guidance_interval=(0.3, 0.8),
                 progress=False)
    for z, r in zip(got, reqs):
        want = reference_euler(GaussianModel(), r, 8, 4.0, interval=(0.3, 0.8))
        torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(z, reference_euler(GaussianModel(), r, 8, 4.0), atol=1e-3)
    sigmas = [[float(s) for s in make_scheduler("euler", _shift(r), 8).sigmas[:-1]] for r in reqs]
    want_calls = [sum(1 + (0.3 <= s[k] <= 0.8) for s in sigmas) for k in range(8)]
    assert calls == want_calls and 16 < sum(calls) < 32  # some steps guided (2 passes), some not
    full = sample(GaussianModel(), reqs, steps=8, sampler="euler", guidance=4.0, guidance_interval=(0, 1),
                  progress=False)
    for z, r in zip(full, reqs):
        torch.testing.assert_close(z, reference_euler(GaussianModel(), r, 8, 4.0), atol=1e-5, rtol=1e-5)
    for bad in ((0.5, 0.2), (-0.1, 0.5), (0.0, 1.5)):
        with pytest.raises(ValueError, match="guidance_interval"):
            sample(GaussianModel(), reqs, guidance=4.0, guidance_interval=bad, progress=False)


def test_cfg_changes_output_and_cfg1_runs_cond_only():
    model = GaussianModel()
    req = Request((2, 4, 4), _text(0.2), seed=0)
    plain = sample(model, [req], steps=8, sampler="heun", guidance=1.0, progress=False)[0]
    assert all(len(c) == 1 for c in model.calls)  # no unconditional pass at cfg = 1
    m = text_mean(req.text)
    torch.testing.assert_close(plain, exact_solution(initial_noise(C, req.size, 0), m), atol=0.05, rtol=0)
    model.calls.clear()
    guided = sample(model, [req], steps=8, sampler="heun", guidance=3.0, progress=False)[0]
    assert all(len(c) == 2 for c in model.calls)  # cond and uncond packed into one call
    assert (guided - plain).abs().mean() > 0.1
    # guidance pushes the sample mean away from the unconditional mean (0) beyond the conditional one
    assert guided.mean().item() > plain.mean().item() > 0
    negative = Request((2, 4, 4), _text(0.2), seed=0, negative=_text(-0.4))
    with_neg = sample(model, [negative], steps=8, sampler="heun", guidance=3.0, progress=False)[0]
    assert with_neg.mean().item() > guided.mean().item() + 0.1  # away from the negative prompt's mean


@pytest.mark.parametrize(
    "sampler,steps,tol", [("euler", 100, 0.05), ("heun", 12, 0.005), ("unipc", 30, 0.02)]
)
def test_samplers_solve_the_exact_gaussian_flow(sampler, steps, tol):
    model = GaussianModel()
    req = Request((3, 4, 4), _text(0.4), seed=7)
    z = sample(model, [req], steps=steps, sampler=sampler, guidance=1.0, progress=False)[0]
    exact = exact_solution(initial_noise(C, req.size, 7), text_mean(req.text))
    err = (z - exact).abs().max().item()
    assert err < tol, f"{sampler}: max error {err}"


def test_higher_order_samplers_beat_euler():
    req = Request((3, 4, 4), _text(0.4), seed=7)
    exact = exact_solution(initial_noise(C, req.size, 7), text_mean(req.text))
    err = {
        s: (sample(GaussianModel(), [req], steps=5, sampler=s, guidance=1.0, progress=False)[0] - exact)
        .abs()
        .max()
        .item()
        for s in ("euler", "heun", "unipc")
    }
    assert err["heun"] < err["euler"] / 3, err
    assert err["unipc"] < err["euler"], err


def test_deterministic_for_seed():
    model = GaussianModel()
    a = sample(model, [Request((2, 4, 4), _text(0.1), seed=3)], steps=4, progress=False)[0]
    b = sample(model, [Request((2, 4, 4), _text(0.1), seed=3)], steps=4, progress=False)[0]
    c = sample(model, [Request((2, 4, 4), _text(0.1), seed=4)], steps=4, progress=False)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1


def test_packed_requests_equal_one_at_a_time_and_budget_groups():
    reqs = [
        Request((2, 4, 6), _text(0.3), seed=1),
        Request((1, 2, 2), _text(-0.2), seed=2, negative=_text(0.5, 2)),
        Request((3, 6, 4), _text(0.0, 1), seed=3),
    ]
    model = GaussianModel()
    together = sample(model, reqs, steps=5, sampler="heun", guidance=2.0, progress=False)
    assert len(model.calls) == 9 and all(len(c) == 6 for c in model.calls)  # one call for all per step
    alone = [
        sample(GaussianModel(), [r], steps=5, sampler="heun", guidance=2.0, progress=False)[0] for r in reqs
    ]
    for z, y, r in zip(together, alone, reqs):
        assert z.shape == (C, *r.size)
        torch.testing.assert_close(z, y, atol=1e-5, rtol=1e-5)
    model = GaussianModel()
    grouped = sample(model, reqs, steps=5, sampler="heun", guidance=2.0, token_budget=40, progress=False)
    per_call_tokens = {sum(s[1] * -(-s[2] // 2) * -(-s[3] // 2) for s in c) for c in model.calls}
    assert max(per_call_tokens) <= 40 and len(model.calls) > 9
    for z, y in zip(grouped, alone):
        torch.testing.assert_close(z, y, atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="guidance"):
        sample(GaussianModel(), [Request((1, 2, 2), _text(0))], guidance=0.5)
    with pytest.raises(ValueError, match="steps"):
        sample(GaussianModel(), [Request((1, 2, 2), _text(0))], steps=0)
    with pytest.raises(ValueError, match="latent size"):
        Request((0, 2, 2), _text(0))


def test_real_videodit_packed_equals_one_at_a_time():
    """Three requests of different shapes packed into one tiny VideoDiT per call (with CFG and a negative
    prompt) give the same latents as generating each alone with the same seed."""
    from videodit.model import DiTConfig, VideoDiT

    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(in_channels=C, text_dim=8, hidden_size=24, depth=1, num_heads=2)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # move off the zero init so the output depends on every input
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    reqs = [
        Request((2, 4, 6), torch.randn(4, 8, generator=g), seed=11),
        Request((1, 3, 5), torch.randn(2, 8, generator=g), seed=12, negative=torch.randn(3, 8, generator=g)),
        Request((3, 2, 2), torch.randn(5, 8, generator=g), seed=13),
    ]
    with torch.no_grad():
        together = sample(model, reqs, steps=3, sampler="euler", guidance=3.0, progress=False)
        alone = [sample(model, [r], steps=3, sampler="euler", guidance=3.0, progress=False)[0] for r in reqs]
        other_seed = sample(model, [Request(reqs[0].size, reqs[0].text, seed=99)], steps=3, progress=False)[0]
    for z, y in zip(together, alone):
        torch.testing.assert_close(z, y, atol=1e-5, rtol=1e-5)
    assert (together[0] - other_seed).abs().max() > 0.1


def test_sampling_builds_no_autograd_graph():
    """Denoising must not keep a graph across steps (memory would grow with steps x requests)."""
    from videodit.model import DiTConfig, VideoDiT
    from videodit.sampling import Request, sample

    model = VideoDiT(DiTConfig(in_channels=4, hidden_size=24, depth=1, num_heads=2))
    out = sample(model, [Request(size=(2, 4, 4), text=torch.randn(3, 384), seed=0)], steps=2,
                 sampler="euler", guidance=2.0, progress=False)
    assert not out[0].requires_grad


class GaussianX0Model(GaussianModel):
    """The same exact world, but predicting the clean latent E[x0 | x_t] (DiTConfig.prediction = "x0")."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(patch=PATCH, in_channels=C, prediction="x0")

    def forward_samples(self, latents, timesteps, text_embeds):
        v = super().forward_samples(latents, timesteps, text_embeds)
        # v = (x_t - x0) / t for the exact posterior -> x0 = x_t - t v
        return [x - t * vi for x, t, vi in zip(latents, timesteps.tolist(), v)]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_x0_prediction_samples_like_the_equivalent_velocity_model(guidance):
    reqs = [Request((3, 4, 4), _text(0.4), seed=7), Request((1, 2, 6), _text(-0.3), seed=1)]
    want = sample(GaussianModel(), reqs, steps=12, sampler="euler", guidance=guidance, progress=False)
    got = sample(GaussianX0Model(), reqs, steps=12, sampler="euler", guidance=guidance, progress=False)
    for a, b in zip(got, want):
        # exact, also in the last steps whose sigma (~0.002) lies below the training floor X0_T_FLOOR
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # and with enough steps it lands on the exact solution of the flow
    z = sample(GaussianX0Model(), reqs[:1], steps=12, sampler="heun", guidance=1.0, progress=False)[0]
    exact = exact_solution(initial_noise(C, reqs[0].size, 7), text_mean(reqs[0].text))
    assert (z - exact).abs().max().item() < 0.005


def test_skip_layer_guidance_adds_scaled_difference_to_the_weakened_pass():
    """v = v_u + g (v_c - v_u) + s (v_c - v_skip), checked against a hand-written Euler loop; s = 0 changes
    nothing; bad settings are refused."""
    from videodit.model import DiTConfig, VideoDiT

    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(in_channels=C, text_dim=8, hidden_size=24, depth=2, num_heads=2)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    req = Request((2, 4, 6), torch.randn(4, 8, generator=g), seed=11)
    got = sample(model, [req], steps=4, sampler="euler", guidance=3.0, skip_guidance=2.0, skip_blocks=(1,),
                 progress=False)[0]
    sched = make_scheduler("euler", _shift(req), 4)
    x = initial_noise(C, req.size, req.seed)
    with torch.no_grad():
        for k in range(4):
            s, s_next = float(sched.sigmas[k]), float(sched.sigmas[k + 1])
            t = torch.tensor([s])
            vc = model.forward_samples([x], t, [req.text])[0]
            vu = model.forward_samples([x], t, [req.text[:0]])[0]
            vs = model.forward_samples([x], t, [req.text], skip_blocks=[frozenset({1})])[0]
            x = x + (s_next - s) * (vu + 3.0 * (vc - vu) + 2.0 * (vc - vs))
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)
    off = sample(model, [req], steps=4, sampler="euler", guidance=3.0, skip_guidance=0.0, skip_blocks=(1,),
                 progress=False)[0]
    torch.testing.assert_close(off, sample(model, [req], steps=4, sampler="euler", guidance=3.0,
                                           progress=False)[0])
    assert (off - got).abs().max() > 1e-3
    for kwargs in ({"skip_guidance": -1.0, "skip_blocks": (1,)}, {"skip_guidance": 1.0, "skip_blocks": ()},
                   {"skip_guidance": 1.0, "skip_blocks": (2,)}):
        with pytest.raises(ValueError, match="skip"):
            sample(model, [req], steps=2, progress=False, **kwargs)


def _flow_from(x_t: torch.Tensor, t: float, m: float) -> torch.Tensor:
    """Exact ODE map of the Gaussian world from x_t at time t to t=0."""
    return m + (x_t - (1 - t) * m) * A / ((1 - t) ** 2 * A**2 + t**2) ** 0.5


@pytest.mark.parametrize("sampler,steps,tol", [("euler", 400, 2e-2), ("heun", 40, 2e-3), ("unipc", 60, 1e-2)])
def test_sdedit_start_noises_init_to_its_sigma_and_solves_the_flow_from_there(sampler, steps, tol):
    """A request with `init` and strength s starts at the first sigma <= s, at (1 - s0) init + s0 noise,
    and runs only the steps from there; strength 1 ignores init."""
    req = Request((2, 4, 4), _text(0.4), seed=5)
    init = torch.randn(C, *req.size, generator=torch.Generator().manual_seed(9)) * 2 + 1
    model = GaussianModel()
    part = Request(req.size, req.text, seed=5, init=init, strength=0.5)
    z = sample(model, [part], steps=steps, sampler=sampler, guidance=1.0, progress=False)[0]
    sched = make_scheduler(sampler, _shift(req), steps)
    sig = [float(s) for s in sched.sigmas[: len(sched.timesteps)]]
    k = next(i for i, s in enumerate(sig) if s <= 0.5 and (sampler != "heun" or i % 2 == 0))
    assert len(model.calls) == len(sig) - k  # only the calls from the start sigma on
    s0 = sig[k]
    x_start = (1 - s0) * init + s0 * initial_noise(C, req.size, 5)
    exact = _flow_from(x_start, s0, text_mean(req.text))
    assert (z - exact).abs().max().item() < tol
    full = sample(GaussianModel(), [req], steps=8, guidance=1.0, progress=False)[0]
    same = sample(GaussianModel(), [Request(req.size, req.text, seed=5, init=init, strength=1.0)], steps=8,
                  guidance=1.0, progress=False)[0]
    torch.testing.assert_close(full, same, rtol=0, atol=0)


def test_sdedit_requests_pack_with_plain_ones_and_bad_init_is_refused():
    init = torch.zeros(C, 2, 4, 4)
    reqs = [Request((2, 4, 4), _text(0.3), seed=1, init=init, strength=0.3),
            Request((1, 2, 2), _text(-0.2), seed=2)]
    together = sample(GaussianModel(), reqs, steps=10, guidance=3.0, progress=False)
    alone = [sample(GaussianModel(), [r], steps=10, guidance=3.0, progress=False)[0] for r in reqs]
    for z, y in zip(together, alone):
        torch.testing.assert_close(z, y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="strength"):
        Request((2, 4, 4), _text(0), init=init, strength=0.0)
    with pytest.raises(ValueError, match="give init"):
        Request((2, 4, 4), _text(0), strength=0.5)
    with pytest.raises(ValueError, match="init latent"):
        Request((3, 4, 4), _text(0), init=init, strength=0.5)


def _causal_model():
    from videodit.model import DiTConfig, VideoDiT

    model = VideoDiT(DiTConfig(in_channels=C, text_dim=8, hidden_size=24, depth=1, num_heads=2,
                               patch=(2, 2, 2), causal_tubelet=True)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_conditioning_prefix_is_kept_and_requests_of_mixed_tasks_pack_as_alone():
    """i2v (1 given latent frame), extension (3 given) and t2v packed in one pass: the given frames come
    back exactly, they change the rest, and each request equals its run alone (CFG on both passes)."""
    model = _causal_model()
    g = torch.Generator().manual_seed(1)
    image = torch.randn(C, 1, 4, 4, generator=g)
    clip = torch.randn(C, 3, 4, 6, generator=g)
    reqs = [Request((5, 4, 4), torch.randn(3, 8, generator=g), seed=1, prefix=image),
            Request((5, 4, 6), torch.randn(3, 8, generator=g), seed=2, prefix=clip),
            Request((3, 4, 4), torch.randn(3, 8, generator=g), seed=3)]
    together = sample(model, reqs, steps=3, guidance=3.0, progress=False)
    alone = [sample(model, [r], steps=3, guidance=3.0, progress=False)[0] for r in reqs]
    for z, y in zip(together, alone):
        torch.testing.assert_close(z, y, atol=1e-5, rtol=1e-5)
    assert torch.equal(together[0][:, :1], image) and torch.equal(together[1][:, :3], clip)
    plain = sample(model, [Request((5, 4, 4), reqs[0].text, seed=1)], steps=3, guidance=3.0,
                   progress=False)[0]
    assert (plain[:, 1:] - together[0][:, 1:]).abs().max() > 1e-3


def test_a_last_frame_is_kept_out_of_the_result_and_packs_as_alone():
    """First and last frame: the last image's latent goes in a token group after the video. The result has
    the video's frames only, the first frame comes back exactly, the last frame changes the video, and the
    request packed with t2v and i2v requests (CFG on) equals its run alone; the denoised latent holds the
    zero pad frame and the image, exactly."""
    from videodit.sampling import denoise_step, start_denoising

    model = _causal_model()
    g = torch.Generator().manual_seed(4)
    first, last = torch.randn(C, 1, 4, 4, generator=g), torch.randn(C, 1, 4, 4, generator=g)
    text = torch.randn(3, 8, generator=g)
    both = Request((5, 4, 4), text, seed=5, prefix=first, last=last)
    reqs = [both, Request((3, 4, 6), torch.randn(2, 8, generator=g), seed=6),
            Request((5, 4, 4), torch.randn(3, 8, generator=g), seed=7, prefix=first)]
    together = sample(model, reqs, steps=3, guidance=3.0, progress=False)
    alone = [sample(model, [r], steps=3, guidance=3.0, progress=False)[0] for r in reqs]
    for z, y in zip(together, alone):
        torch.testing.assert_close(z, y, atol=1e-5, rtol=1e-5)
    assert together[0].shape == (C, 5, 4, 4) and torch.equal(together[0][:, :1], first)
    first_only = sample(model, [Request((5, 4, 4), text, seed=5, prefix=first)], steps=3, guidance=3.0,
                        progress=False)[0]
    assert (first_only[:, 1:] - together[0][:, 1:]).abs().max() > 1e-3
    state = start_denoising(model, both, 3, guidance=3.0)
    while not state.done:
        denoise_step(model, [state])
    assert state.latent.shape == (C, 7, 4, 4) and torch.equal(state.latent[:, 6:], last)
    assert not state.latent[:, 5].any() and torch.equal(state.video, alone[0])


def test_a_last_frame_needs_a_video_that_ends_on_a_token_group():
    model = _causal_model()
    last = torch.randn(C, 1, 4, 4)
    with pytest.raises(ValueError, match="does not end on a token group"):
        sample(model, [Request((4, 4, 4), torch.randn(3, 8), last=last)], steps=2, progress=False)
    with pytest.raises(ValueError, match=r"must be \(C, 1, h, w\)"):
        Request((5, 4, 4), torch.randn(3, 8), last=torch.randn(C, 2, 4, 4))


def test_a_prefix_that_splits_a_token_is_refused():
    model = _causal_model()
    req = Request((5, 4, 4), torch.randn(3, 8), prefix=torch.randn(C, 2, 4, 4))  # frames [1 2] split
    with pytest.raises(ValueError, match="does not end on a token group"):
        sample(model, [req], steps=2, progress=False)
    with pytest.raises(ValueError, match="1 <= k < T"):
        Request((1, 4, 4), torch.randn(3, 8), prefix=torch.randn(C, 1, 4, 4))


def test_a_request_joining_a_running_batch_midway_equals_its_run_alone():
    """Step-wise sampling as a server runs it: two requests (different shapes, steps and guidance) run;
    after two calls an i2v request joins, and each leaves when its own steps are done. Every latent equals
    the request's run alone (`sample`) to 1e-4, and the joined calls really were shared."""
    from videodit.sampling import denoise_step, start_denoising

    model = _causal_model()
    g = torch.Generator().manual_seed(2)
    runs = [  # (request, steps, guidance)
        (Request((3, 4, 6), torch.randn(4, 8, generator=g), seed=21), 6, 3.0),
        (Request((1, 2, 4), torch.randn(2, 8, generator=g), seed=22, negative=torch.randn(3, 8, generator=g)),
         3, 2.0),
        (Request((5, 4, 4), torch.randn(3, 8, generator=g), seed=23, prefix=torch.randn(C, 1, 4, 4,
                                                                                       generator=g)), 4, 1.0),
    ]
    sizes = []
    forward = model.forward_samples
    model.forward_samples = lambda xs, *a, **k: sizes.append(len(xs)) or forward(xs, *a, **k)
    start = [start_denoising(model, r, steps, guidance=cfg) for r, steps, cfg in runs]
    running, call = start[:2], 0
    while running:
        if call == 2:
            running.append(start[2])
        denoise_step(model, running)
        running = [s for s in running if not s.done]
        call += 1
    # a and b guided (2 passes each), c joins at call 2 unguided (1 pass); b leaves after 3 calls
    assert sizes == [4, 4, 5, 3, 3, 3] and all(s.done for s in start)
    model.forward_samples = forward
    for (r, steps, cfg), s in zip(runs, start):
        alone = sample(model, [r], steps=steps, guidance=cfg, progress=False)[0]
        torch.testing.assert_close(s.latent, alone, atol=1e-4, rtol=0)
    assert torch.equal(start[2].latent[:, :1], runs[2][0].prefix)
