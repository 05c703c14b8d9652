"""Sampling a Wan model the way its diffusers folder prescribes, with NaViT-packed requests.

Differences from videodit.sampling (our own checkpoints), each matching diffusers' WanPipeline:
- The scheduler is the folder's (`scheduler/scheduler_config.json`): UniPC with flow sigmas and the folder's
  fixed `flow_shift` (or flow-matching Euler), with no shift by token count.
- The model is fed `scheduler.timesteps[i] / 1000`, the scheduler's timestep as diffusers feeds it
  (UniPC's are integer-cast), not the exact sigma; VideoDiT's t is diffusers' timestep / 1000.
- Text is Wan's: prompt states padded to 512 rows (videodit.wan_text), and the unconditional branch is the
  padded negative prompt (or ""), never a learned null token.
As in videodit.sampling, at each step every active request's conditional and unconditional inputs, whatever
their shapes, go through ONE packed `forward_samples` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from tqdm.auto import tqdm

from videodit.packing import plan_rows
from videodit.sampling import Request, initial_noise, request_tokens

SCHEDULERS = {"UniPCMultistepScheduler": UniPCMultistepScheduler,
              "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler}


def scheduler_from_config(config: dict[str, Any]):
    """A fresh diffusers scheduler from a folder's scheduler config dict (its `_class_name` picks the class).

    ValueError for a class other than UniPCMultistepScheduler / FlowMatchEulerDiscreteScheduler, and for a
    UniPC config that is not on flow sigmas with flow prediction (that is not a Wan flow-matching config)."""
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"unsupported scheduler _class_name {name!r}; supported: {', '.join(SCHEDULERS)}")
    if name == "UniPCMultistepScheduler" and not (
        config.get("use_flow_sigmas") and config.get("prediction_type") == "flow_prediction"
    ):
        raise ValueError("a UniPCMultistepScheduler config for a Wan model needs use_flow_sigmas=true and "
                         "prediction_type='flow_prediction', got "
                         f"use_flow_sigmas={config.get('use_flow_sigmas')}, "
                         f"prediction_type={config.get('prediction_type')!r}")
    return SCHEDULERS[name].from_config(config)


@torch.no_grad()
def sample_wan(
    model,
    requests: Sequence[Request],
    scheduler_config: dict[str, Any],
    steps: int = 50,
    guidance: float = 5.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    token_budget: int | None = None,
    progress: bool = True,
    noise: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Denoise every request -> clean latents (C, T, h, w) float32 on `device`, in request order.

    Each request's `text` and (with guidance > 1) `negative` are Wan text: padded states
    (videodit.wan_text.pad_text). `noise`: the initial latents, one (C, T, h, w) per request; by default each
    request's seeded noise (videodit.sampling.initial_noise). `token_budget` groups requests as in
    videodit.sampling.sample."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guidance < 1.0:
        raise ValueError(f"guidance scale must be >= 1, got {guidance}")
    scheduler_from_config(scheduler_config)  # validate before any work
    guided = guidance != 1.0
    for i, r in enumerate(requests):
        if r.init is not None:
            raise ValueError(f"request {i}: starting from an init latent is not supported for Wan sampling")
        if r.text.shape[0] == 0 or (guided and (r.negative is None or r.negative.shape[0] == 0)):
            raise ValueError(f"request {i}: a Wan model needs padded prompt and negative-prompt text "
                             "(videodit.wan_text.pad_text); got an empty or missing one")
    if noise is not None:
        if len(noise) != len(requests):
            raise ValueError(f"got {len(noise)} noise latents for {len(requests)} requests")
        channels = int(model.config.in_channels)
        for i, (z, r) in enumerate(zip(noise, requests)):
            if tuple(z.shape) != (channels, *r.size):
                raise ValueError(f"noise {i} has shape {tuple(z.shape)}, request {i} needs "
                                 f"{(channels, *r.size)}")
    if not requests:
        return []
    patch = tuple(model.config.patch)
    costs = [request_tokens(r, patch, guided) for r in requests]
    budget = max([token_budget or sum(costs), *costs])
    out: list[torch.Tensor | None] = [None] * len(requests)
    for group in plan_rows(costs, budget):
        group = sorted(group)
        group_noise = None if noise is None else [noise[i] for i in group]
        results = _denoise_group(model, [requests[i] for i in group], scheduler_config, steps, guidance,
                                 device, dtype, progress, group_noise)
        for i, z in zip(group, results):
            out[i] = z
    return out  # type: ignore[return-value]


def _denoise_group(
    model,
    requests: Sequence[Request],
    scheduler_config: dict[str, Any],
    steps: int,
    guidance: float,
    device: str | torch.device,
    dtype: torch.dtype,
    progress: bool,
    noise: Sequence[torch.Tensor] | None,
) -> list[torch.Tensor]:
    """The denoising loop for requests that share every forward pass (their schedules are identical)."""
    channels = int(model.config.in_channels)
    guided = guidance != 1.0
    scheds = []
    for _ in requests:
        sched = scheduler_from_config(scheduler_config)
        sched.set_timesteps(steps, device=device)
        sched.set_begin_index(0)
        scheds.append(sched)
    if noise is None:
        latents = [initial_noise(channels, r.size, r.seed).to(device) for r in requests]
    else:
        latents = [z.to(device=device, dtype=torch.float32) for z in noise]  # (C, T, h, w)
    texts = [r.text.to(device=device, dtype=dtype) for r in requests]
    negatives = [r.negative.to(device=device, dtype=dtype) if guided else None for r in requests]
    timesteps = scheds[0].timesteps
    for step in tqdm(range(len(timesteps)), desc=f"sampling {len(requests)} request(s)", disable=not progress,
                     unit="step"):
        xs, es = [], []
        for i in range(len(requests)):
            xs += [latents[i].to(dtype)] * (2 if guided else 1)
            es += [texts[i], negatives[i]] if guided else [texts[i]]
        t = scheds[0].timesteps[step].double() / 1000.0  # what diffusers feeds, on VideoDiT's [0, 1] scale
        preds = model.forward_samples(xs, t.expand(len(xs)).to(device), es)
        for i in range(len(requests)):
            v = preds[2 * i].float() if guided else preds[i].float()
            if guided:
                uncond = preds[2 * i + 1].float()
                v = uncond + guidance * (v - uncond)
            x = scheds[i].step(v[None], scheds[i].timesteps[step], latents[i][None], return_dict=False)[0]
            latents[i] = x[0]  # (C, T, h, w)
    return latents
