"""Whether a request may run on this server at all, decided when it is submitted (a 400 naming the numbers),
never after it has waited in the queue.

Two limits: the per-step token budget (the most tokens, CFG passes included, that the batcher puts in one
denoising forward pass; a request above it alone would break the bound on step latency), and the up-front
memory estimate that generate.py uses (`videodit.budget` with `videodit.footprint`): `memory_limit` sizes
the checkpoint and the machine once, before the model loads, and `check_memory` sizes each request against
that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from videodit import budget
from videodit.footprint import available_bytes, footprint
from videodit.packing import num_tokens
from videodit.pipeline import Pipeline, SamplingSettings, sampling_settings
from videodit.serve.spec import JobSpec
from videodit.video_reader import source_extent
from videodit.video_request import latent_shape


@dataclass(frozen=True)
class MemoryLimit:
    """The up-front estimate's view of this server: its models' footprint (`videodit.budget.Footprint`) and
    the bytes a run may use (measured before the model loaded, as generate.py measures them)."""

    footprint: Any
    available: int


def memory_limit(ckpt: str, vae: str | None, dtype: torch.dtype, device: torch.device,
                 max_memory_gb: float | None) -> MemoryLimit:
    """Size the checkpoint (from its folders, no weights read) and the machine."""
    fp, _ = footprint(ckpt, vae, torch.finfo(dtype).bits // 8)
    return MemoryLimit(fp, available_bytes(device, max_memory_gb))


def pass_token_limit(memory: MemoryLimit | None, token_budget: int) -> int:
    """The per-step budget the batcher keeps: `token_budget`, lowered to what one pass may hold in memory."""
    if memory is None:
        return token_budget
    return min(token_budget, budget.pass_token_budget(memory.footprint, memory.available))


def settings_of(spec: JobSpec, pipe: Pipeline) -> SamplingSettings:
    return sampling_settings(pipe.meta, steps=spec.steps, cfg=spec.cfg, sampler=spec.sampler)


def step_tokens(spec: JobSpec, pipe: Pipeline) -> int:
    """Tokens the job adds to every denoising forward pass: its latent grid once per pass (conditional, CFG's
    unconditional, skip-layer guidance's)."""
    settings = settings_of(spec, pipe)
    cfg = pipe.dit.config
    vae = pipe.vae
    size = latent_shape(spec.frames, spec.height, spec.width, vae.temporal_stride, vae.spatial_stride)
    passes = 1 + int(settings.cfg != 1.0) + int(settings.skip_guidance > 0)
    return num_tokens(size, tuple(cfg.patch), bool(getattr(cfg, "causal_tubelet", False))) * passes


def check_admission(spec: JobSpec, pipe: Pipeline, token_budget: int, memory: MemoryLimit | None) -> int:
    """-> the job's tokens per step; ValueError with the numbers when it cannot run on this server (memory
    first: it is what the machine has, the token budget is what this server chose)."""
    check_memory(spec, pipe, memory)
    tokens = step_tokens(spec, pipe)
    if tokens > token_budget:
        raise ValueError(f"{spec.frames} frames of {spec.size} need {tokens} tokens in each denoising step "
                         f"(CFG passes included); this server's per-step budget is {token_budget} "
                         f"(--token-budget, or what one pass may hold in memory): ask for fewer frames or a "
                         f"smaller size")
    return tokens


def check_memory(spec: JobSpec, pipe: Pipeline, memory: MemoryLimit | None) -> None:
    """generate.py's up-front estimate of running the request alone: ValueError with the numbers when it
    needs more than the machine has. A no-op without the estimate."""
    if memory is None:
        return
    settings = settings_of(spec, pipe)
    source = spec.init_video or spec.image or spec.extend
    size = None if source is None else source_extent(source, spec.frames)
    _, need = budget.request_tokens_and_bytes(spec.frames, spec.height, spec.width, memory.footprint,
                                              settings.cfg != 1.0, settings.skip_guidance > 0, size)
    budget.check_fits(need, memory.available, f"{spec.frames} frames of {spec.size} (WIDTHxHEIGHT)")
