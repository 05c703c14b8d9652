"""Sampling: diffusers flow-matching schedulers, classifier-free guidance, NaViT-packed requests.

Every request (its own latent size, prompt, negative prompt, seed) gets its own scheduler instance
whose sigma schedule is shifted by that request's token count with the same `timestep_shift` used in
training (`videodit.flow`). At each step all active requests, and for CFG both their conditional and
unconditional inputs, are packed into ONE `model.forward_samples` call: requests of different shapes
share the forward passes instead of running in a loop.

A request's initial noise comes from a CPU `torch.Generator` seeded with its own seed, so its result does
not depend on what else is in the batch (up to float rounding of the batched matmuls).

A request with an `init` latent and `strength` s < 1 starts part-way (SDEdit): `init` is noised to the
first sigma of its schedule at or below s and only the steps from there run.

An x0-predicting model's outputs are turned into velocities (`videodit.flow.to_velocity`) before CFG.

CFG: v = v_uncond + g * (v_cond - v_uncond). The unconditional input is the negative prompt when given,
else the empty text (zero tokens -> the model's learned null token). g == 1 skips the unconditional pass.

Samplers (`SAMPLERS`): "euler" (FlowMatchEulerDiscreteScheduler, 1 model call a step), "heun"
(FlowMatchHeunDiscreteScheduler, 2nd order, 2 calls a step but the last), "unipc" (UniPCMultistepScheduler
on flow sigmas, 2nd-order multistep, 1 call a step). The model's timestep is the scheduler's sigma at
that call, the `t` of `x_t = (1 - t) x0 + t noise`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler
from tqdm.auto import tqdm

from videodit.flow import FlowConfig, timestep_shift, to_velocity
from videodit.packing import num_tokens, plan_rows
from videodit.patchify import group_ends

SAMPLERS = ("euler", "heun", "unipc")


@dataclass
class Request:
    """One video to sample, in latent space."""

    size: tuple[int, int, int]  # latent (T, h, w)
    text: torch.Tensor  # (L, D_text) prompt tokens; (0, D_text) = unconditional
    seed: int = 0
    negative: torch.Tensor | None = None  # (L_neg, D_text) negative-prompt tokens; None = empty text
    # Start from a given clean latent instead of pure noise (SDEdit, Meng et al. 2022): `init` (C, T, h, w)
    # is noised to the first scheduler sigma <= `strength` and denoised from there. strength 1 = from noise.
    init: torch.Tensor | None = None
    strength: float = 1.0
    # Conditioning (image-to-video, extension): clean latent frames 0..k-1 `(C, k, h, w)` given. They are
    # re-imposed before every model call and after every step, enter the model with t = 0 in both CFG
    # passes, and come back unchanged; k must end on a token group (latent frame 0 alone for i2v needs
    # the model's causal tubelet).
    prefix: torch.Tensor | None = None

    def __post_init__(self):
        if len(self.size) != 3 or any(int(s) < 1 for s in self.size):
            raise ValueError(f"latent size must be three positive integers (T, h, w), got {self.size!r}")
        self.size = tuple(int(s) for s in self.size)
        if not 0.0 < float(self.strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.init is None and self.strength < 1.0:
            raise ValueError(f"strength {self.strength} < 1 starts from an init latent: give init")
        if self.init is not None and tuple(self.init.shape[1:]) != self.size:
            raise ValueError(f"init latent {tuple(self.init.shape)} does not match size {self.size}")
        if self.prefix is not None:
            k = self.prefix.shape[1] if self.prefix.dim() == 4 else 0
            if k < 1 or k >= self.size[0] or tuple(self.prefix.shape[2:]) != self.size[1:]:
                raise ValueError(f"conditioning prefix {tuple(self.prefix.shape)} must be (C, k, h, w) with "
                                 f"1 <= k < T and (h, w) of the request's latent size {self.size}")


def make_scheduler(sampler: str, shift: float, steps: int):
    """A fresh diffusers scheduler for `sampler` with sigmas shifted by `shift`, set to `steps` steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sampler == "euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    elif sampler == "heun":
        sched = FlowMatchHeunDiscreteScheduler(shift=shift)
    elif sampler == "unipc":
        sched = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2
        )
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    sched.set_timesteps(steps)
    return sched


def initial_noise(channels: int, size: tuple[int, int, int], seed: int) -> torch.Tensor:
    """(C, T, h, w) float32 standard normal noise from a CPU generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((channels, *size), generator=gen)


def request_tokens(req: Request, patch: tuple[int, int, int], guided: bool, skip_pass: bool = False,
                   causal: bool = False) -> int:
    """Tokens one request adds to every forward pass: its grid, once more for CFG's unconditional pass and
    once more for skip-layer guidance's pass."""
    return num_tokens(req.size, patch, causal) * (1 + int(guided) + int(skip_pass))


@torch.no_grad()
def sample(
    model,
    requests: Sequence[Request],
    steps: int = 30,
    sampler: str = "euler",
    guidance: float = 5.0,
    flow_cfg: FlowConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    token_budget: int | None = None,
    progress: bool = True,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    skip_guidance: float = 0.0,
    skip_blocks: Sequence[int] = (),
) -> list[torch.Tensor]:
    """Denoise every request -> list of clean latents (C, T, h, w) float32 on `device`, in request order.

    `guidance_interval` (lo, hi): classifier-free guidance applies only at steps whose noise level sigma
    lies in [lo, hi]; other steps use the conditional prediction alone and skip the unconditional pass
    (guidance in a limited interval, Kynkaanniemi et al. 2024). (0, 1), the default, guides every step.

    `skip_guidance` s > 0 adds skip-layer guidance at the same steps: a third pass, conditional, with the
    DiT blocks `skip_blocks` made identity (a weakened model, as in spatiotemporal skip guidance, Hyung et
    al. 2024), and v += s * (v_cond - v_skip), steering away from what the weakened model would draw.

    `token_budget` caps the tokens of one forward pass: requests are grouped by first-fit decreasing
    (`plan_rows`) and each group is denoised together (a request larger than the budget runs alone).
    `None` puts all requests in one group.
    """
    if guidance < 1.0:
        raise ValueError(f"guidance scale must be >= 1, got {guidance}")
    lo, hi = guidance_interval
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {guidance_interval}")
    if skip_guidance < 0:
        raise ValueError(f"skip_guidance must be >= 0, got {skip_guidance}")
    if skip_guidance > 0:
        depth = int(model.config.depth)
        if not skip_blocks or not all(0 <= int(b) < depth for b in skip_blocks):
            raise ValueError(
                f"skip_guidance > 0 needs skip_blocks (generate.py --skip-blocks), DiT block indices in "
                f"0..{depth - 1}; got {list(skip_blocks)}"
            )
    if not requests:
        return []
    flow_cfg = flow_cfg or FlowConfig()
    patch = tuple(model.config.patch)
    guided = guidance != 1.0
    causal = bool(getattr(model.config, "causal_tubelet", False))
    costs = [request_tokens(r, patch, guided, skip_guidance > 0, causal) for r in requests]
    budget = max([token_budget or sum(costs), *costs])
    out: list[torch.Tensor | None] = [None] * len(requests)
    for group in plan_rows(costs, budget):
        group = sorted(group)
        results = _denoise_group(
            model, [requests[i] for i in group], steps, sampler, guidance, flow_cfg, device, dtype, progress,
            (lo, hi), skip_guidance, frozenset(int(b) for b in skip_blocks),
        )
        for i, z in zip(group, results):
            out[i] = z
    return out  # type: ignore[return-value]


def _denoise_group(
    model,
    requests: Sequence[Request],
    steps: int,
    sampler: str,
    guidance: float,
    flow_cfg: FlowConfig,
    device: str | torch.device,
    dtype: torch.dtype,
    progress: bool,
    interval: tuple[float, float] = (0.0, 1.0),
    skip_guidance: float = 0.0,
    skip_set: frozenset[int] = frozenset(),
) -> list[torch.Tensor]:
    """Run the whole denoising loop for requests that share every forward pass."""
    patch = tuple(model.config.patch)
    channels = int(model.config.in_channels)
    guided = guidance != 1.0
    prediction = getattr(model.config, "prediction", "velocity")
    causal = bool(getattr(model.config, "causal_tubelet", False))
    shifts = [timestep_shift(num_tokens(r.size, patch, causal), flow_cfg) for r in requests]
    scheds = [make_scheduler(sampler, shift, steps) for shift in shifts]
    latents = [initial_noise(channels, r.size, r.seed).to(device) for r in requests]  # float32 (C, T, h, w)
    starts = [0] * len(requests)  # each request's first scheduler step (> 0 for an SDEdit start)
    for i, r in enumerate(requests):
        if r.init is None or r.strength >= 1.0:
            continue
        sig = scheds[i].sigmas[: len(scheds[i].timesteps)]
        first = [k for k in range(len(sig)) if sampler != "heun" or k % 2 == 0]  # heun: its predictor calls
        starts[i] = next((k for k in first if float(sig[k]) <= r.strength), first[-1])  # >= 1 call runs
        s0 = float(sig[starts[i]])
        latents[i] = (1.0 - s0) * r.init.to(device=device, dtype=torch.float32) + s0 * latents[i]
        scheds[i].set_begin_index(starts[i])
    prefixes = [None if r.prefix is None else r.prefix.to(device=device, dtype=torch.float32)
                for r in requests]
    for i, p in enumerate(prefixes):
        if p is not None:
            if p.shape[1] not in group_ends(requests[i].size[0], patch, causal):
                raise ValueError(f"a conditioning prefix of {p.shape[1]} latent frames does not end on a "
                                 f"token group of patch {patch} (causal tubelet {causal}): this model cannot "
                                 f"take it")
            latents[i][:, : p.shape[1]] = p
    any_prefix = any(p is not None for p in prefixes)
    texts = [r.text.to(device=device, dtype=dtype) for r in requests]
    uncond = [r.text[:0] if r.negative is None else r.negative for r in requests]
    uncond = [e.to(device=device, dtype=dtype) for e in uncond]
    num_calls = max(len(s.timesteps) - k for s, k in zip(scheds, starts))
    desc = f"sampling {len(requests)} request(s)"
    bar = tqdm(total=num_calls, desc=desc, disable=not progress, unit="call")
    for step in range(num_calls):
        active = [i for i, s in enumerate(scheds) if starts[i] + step < len(s.timesteps)]
        timesteps = [scheds[i].timesteps[starts[i] + step] for i in active]
        t = [float(scheds[i].sigmas[starts[i] + step]) for i in active]  # the sigma this call is evaluated at
        inside = [interval[0] <= t_i <= interval[1] for t_i in t]  # per active request
        guide = [guided and g for g in inside]
        skipg = [skip_guidance > 0 and g for g in inside]
        xs, ts, es, skips, frame_ts = [], [], [], [], []
        for i, t_i, g, sg in zip(active, t, guide, skipg):
            frames = torch.full((requests[i].size[0],), t_i)
            if prefixes[i] is not None:
                frames[: prefixes[i].shape[1]] = 0.0
            passes = [(texts[i], frozenset())]
            if g:
                passes.append((uncond[i], frozenset()))
            if sg:
                passes.append((texts[i], skip_set))
            for text, skip in passes:
                xs.append(latents[i].to(dtype))
                ts.append(t_i)
                es.append(text)
                skips.append(skip)
                frame_ts.append(frames)
        tt = torch.tensor(ts, device=device, dtype=torch.float32)
        extra = {"frame_timesteps": frame_ts} if any_prefix else {}
        if any(skips):
            extra["skip_blocks"] = skips
        preds = model.forward_samples(xs, tt, es, **extra)
        if prediction != "velocity":
            preds = [to_velocity(p.float(), x.float(), t_i, prediction, t_floor=1e-6)
                     for p, x, t_i in zip(preds, xs, ts)]
        k = 0  # index into preds
        for i, timestep, g, sg in zip(active, timesteps, guide, skipg):
            cond = preds[k].float()
            k += 1
            v = cond
            if g:
                v = preds[k].float() + guidance * (cond - preds[k].float())
                k += 1
            if sg:
                v = v + skip_guidance * (cond - preds[k].float())
                k += 1
            x = scheds[i].step(v[None], timestep, latents[i][None], return_dict=False)[0]  # (1, C, T, h, w)
            latents[i] = x[0]
            if prefixes[i] is not None:  # the given frames stay exactly what was given
                latents[i][:, : prefixes[i].shape[1]] = prefixes[i]
        bar.update(1)
    bar.close()
    return latents
