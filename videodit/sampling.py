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

The loop is step-wise: `start_denoising` makes a request's state (`Denoising`: its scheduler, latent and
call count) and `denoise_step` advances a set of states by one packed model call. `sample` runs whole loops
with them; a server (`videodit.serve`) lets requests join and leave its running set between steps.

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
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler
from tqdm.auto import tqdm

from videodit.flow import FlowConfig, timestep_shift, to_velocity
from videodit.last_frame import append_last_frame, last_frame_mask
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
    # First-and-last-frame conditioning: the last image's 1-frame latent `(C, 1, h, w)`, encoded alone. It
    # follows the video in a token group of its own (`videodit.last_frame`), kept like a prefix, and is not
    # part of the result; T must end on a token group.
    last: torch.Tensor | None = None

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
        if self.last is not None and (self.last.dim() != 4 or self.last.shape[1] != 1
                                      or tuple(self.last.shape[2:]) != self.size[1:]):
            raise ValueError(f"last-frame latent {tuple(self.last.shape)} must be (C, 1, h, w) with (h, w) "
                             f"of the request's latent size {self.size}")

    def denoised_size(self, patch: tuple[int, int, int]) -> tuple[int, int, int]:
        """The latent size the sampler denoises: the video's, plus the last frame's token group."""
        T, h, w = self.size
        return (T + patch[0] if self.last is not None else T, h, w)


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
    return num_tokens(req.denoised_size(patch), patch, causal) * (1 + int(guided) + int(skip_pass))


def check_guidance(model, guidance: float, interval: tuple[float, float] = (0.0, 1.0),
                   skip_guidance: float = 0.0, skip_blocks: Sequence[int] = ()) -> None:
    """ValueError naming the bad value when guidance settings are out of range for `model`."""
    if guidance < 1.0:
        raise ValueError(f"guidance scale must be >= 1, got {guidance}")
    lo, hi = interval
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {interval}")
    if skip_guidance < 0:
        raise ValueError(f"skip_guidance must be >= 0, got {skip_guidance}")
    if skip_guidance > 0:
        depth = int(model.config.depth)
        if not skip_blocks or not all(0 <= int(b) < depth for b in skip_blocks):
            raise ValueError(
                f"skip_guidance > 0 needs skip_blocks (generate.py --skip-blocks), DiT block indices in "
                f"0..{depth - 1}; got {list(skip_blocks)}"
            )


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
    check_guidance(model, guidance, guidance_interval, skip_guidance, skip_blocks)
    if not requests:
        return []
    flow_cfg = flow_cfg or FlowConfig()
    patch = tuple(model.config.patch)
    guided = guidance != 1.0
    causal = bool(getattr(model.config, "causal_tubelet", False))
    costs = [request_tokens(r, patch, guided, skip_guidance > 0, causal) for r in requests]
    budget = max([token_budget or sum(costs), *costs])
    skip_set = frozenset(int(b) for b in skip_blocks)
    out: list[torch.Tensor | None] = [None] * len(requests)
    for group in plan_rows(costs, budget):
        group = sorted(group)
        states = [start_denoising(model, requests[i], steps, sampler, guidance, flow_cfg, device, dtype,
                                  guidance_interval, skip_guidance, skip_set) for i in group]
        bar = tqdm(total=max(s.total_calls for s in states), desc=f"sampling {len(states)} request(s)",
                   disable=not progress, unit="call")
        while active := [s for s in states if not s.done]:
            denoise_step(model, active, dtype)
            bar.update(1)
        bar.close()
        for i, s in zip(group, states):
            out[i] = s.video
    return out  # type: ignore[return-value]


@dataclass
class Denoising:
    """One request part-way through its denoising loop: everything `denoise_step` needs to advance it.

    Each request carries its own scheduler, guidance and step count, so requests that started at different
    times (or with different settings) can share a forward pass and leave when they are done."""

    request: Request
    scheduler: Any  # a diffusers scheduler of its own (`make_scheduler`)
    latent: torch.Tensor  # (C, T', h, w) float32 on the device: x at the current noise level (T' = T, or
    # T + pt with a last frame's group)
    text: torch.Tensor  # (L, D_text) prompt tokens on the device, model dtype
    uncond: torch.Tensor  # (L_neg, D_text) the unconditional pass's text (negative prompt or empty)
    given: torch.Tensor | None  # (C, T', h, w) float32: the clean values of the frames `cond` marks
    cond: torch.Tensor | None  # (T',) bool: frames kept as given (prefix, last frame's group)
    start: int  # first scheduler step (> 0 for an SDEdit start)
    guidance: float = 5.0
    interval: tuple[float, float] = (0.0, 1.0)  # sigmas at which CFG and skip guidance apply
    skip_guidance: float = 0.0
    skip_set: frozenset[int] = frozenset()
    calls: int = 0  # model calls made so far

    @property
    def total_calls(self) -> int:
        return len(self.scheduler.timesteps) - self.start

    @property
    def done(self) -> bool:
        return self.calls >= self.total_calls

    @property
    def video(self) -> torch.Tensor:
        """(C, T, h, w): the request's own latent frames (without a last frame's group)."""
        return self.latent[:, : self.request.size[0]]

    def impose(self) -> None:
        """Put the given frames back exactly as given."""
        if self.cond is not None:
            self.latent[:, self.cond] = self.given[:, self.cond]


def start_denoising(
    model,
    request: Request,
    steps: int,
    sampler: str = "euler",
    guidance: float = 5.0,
    flow_cfg: FlowConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    interval: tuple[float, float] = (0.0, 1.0),
    skip_guidance: float = 0.0,
    skip_set: frozenset[int] = frozenset(),
) -> Denoising:
    """A request's state before its first model call: its scheduler shifted by its own token count, its
    seeded noise (SDEdit: the init latent noised to its first sigma), its conditioning prefix and last
    frame imposed."""
    check_guidance(model, guidance, interval, skip_guidance, tuple(skip_set))
    flow_cfg = flow_cfg or FlowConfig()
    patch = tuple(model.config.patch)
    causal = bool(getattr(model.config, "causal_tubelet", False))
    size = request.denoised_size(patch)
    sched = make_scheduler(sampler, timestep_shift(num_tokens(size, patch, causal), flow_cfg), steps)
    channels = int(model.config.in_channels)
    latent = initial_noise(channels, request.size, request.seed).to(device)  # float32 (C, T, h, w)
    start = 0
    if request.init is not None and request.strength < 1.0:
        sig = sched.sigmas[: len(sched.timesteps)]
        first = [k for k in range(len(sig)) if sampler != "heun" or k % 2 == 0]  # heun: its predictor calls
        start = next((k for k in first if float(sig[k]) <= request.strength), first[-1])  # >= 1 call runs
        s0 = float(sig[start])
        latent = (1.0 - s0) * request.init.to(device=device, dtype=torch.float32) + s0 * latent
        sched.set_begin_index(start)
    given = cond = None
    if request.prefix is not None or request.last is not None:
        given, cond = torch.zeros_like(latent), torch.zeros(request.size[0], dtype=torch.bool, device=device)
    if request.prefix is not None:
        k = request.prefix.shape[1]
        if k not in group_ends(request.size[0], patch, causal):
            raise ValueError(f"a conditioning prefix of {k} latent frames does not end on a "
                             f"token group of patch {patch} (causal tubelet {causal}): this model cannot "
                             f"take it")
        given[:, :k] = request.prefix.to(device=device, dtype=torch.float32)
        cond[:k] = True
    if request.last is not None:
        last = request.last.to(device=device, dtype=torch.float32)
        given = append_last_frame(given, last, patch, causal)  # (C, T + pt, h, w)
        latent = torch.cat([latent, given[:, request.size[0]:]], dim=1)
        cond = torch.cat([cond, last_frame_mask(request.size[0], patch)[request.size[0]:].to(device)])
    uncond = request.text[:0] if request.negative is None else request.negative
    state = Denoising(request, sched, latent, request.text.to(device=device, dtype=dtype),
                      uncond.to(device=device, dtype=dtype), given, cond, start, guidance, tuple(interval),
                      skip_guidance, frozenset(skip_set))
    state.impose()
    return state


@torch.no_grad()
def denoise_step(model, states: Sequence[Denoising], dtype: torch.dtype = torch.float32) -> None:
    """Advance every state (none of them done) by one model call: all of them, and each one's CFG and
    skip-guidance passes, packed into ONE `model.forward_samples` call. Updates the states in place."""
    assert states and not any(s.done for s in states), "denoise_step needs states that are not done"
    prediction = getattr(model.config, "prediction", "velocity")
    any_cond = any(s.cond is not None for s in states)
    xs, ts, es, skips, frame_ts, plans = [], [], [], [], [], []
    for s in states:
        k = s.start + s.calls
        t_i = float(s.scheduler.sigmas[k])  # the sigma this call is evaluated at
        inside = s.interval[0] <= t_i <= s.interval[1]
        g = s.guidance != 1.0 and inside
        sg = s.skip_guidance > 0 and inside
        frames = torch.full((s.latent.shape[1],), t_i)
        if s.cond is not None:
            frames[s.cond.cpu()] = 0.0
        passes = [(s.text, frozenset())]
        if g:
            passes.append((s.uncond, frozenset()))
        if sg:
            passes.append((s.text, s.skip_set))
        for text, skip in passes:
            xs.append(s.latent.to(dtype))
            ts.append(t_i)
            es.append(text)
            skips.append(skip)
            frame_ts.append(frames)
        plans.append((s.scheduler.timesteps[k], g, sg))
    tt = torch.tensor(ts, device=states[0].latent.device, dtype=torch.float32)
    extra = {"frame_timesteps": frame_ts} if any_cond else {}
    if any(skips):
        extra["skip_blocks"] = skips
    preds = model.forward_samples(xs, tt, es, **extra)
    if prediction != "velocity":
        preds = [to_velocity(p.float(), x.float(), t_i, prediction, t_floor=1e-6)
                 for p, x, t_i in zip(preds, xs, ts)]
    j = 0  # index into preds
    for s, (timestep, g, sg) in zip(states, plans):
        cond = preds[j].float()
        j += 1
        v = cond
        if g:
            v = preds[j].float() + s.guidance * (cond - preds[j].float())
            j += 1
        if sg:
            v = v + s.skip_guidance * (cond - preds[j].float())
            j += 1
        x = s.scheduler.step(v[None], timestep, s.latent[None], return_dict=False)[0]  # (1, C, T, h, w)
        s.latent = x[0]
        s.impose()  # the given frames stay exactly what was given
        s.calls += 1
