"""Whether a request may run on this server at all, decided when it is submitted (a 400 naming the numbers),
never after it has waited in the queue.

Two limits: the per-step token budget (the most tokens, CFG passes included, that the batcher puts in one
denoising forward pass; a request above it alone would break the bound on step latency), and the up-front
memory estimate that generate.py uses (`videodit.budget`, where that module is installed).
"""

from __future__ import annotations

from pathlib import Path

from videodit.packing import num_tokens
from videodit.pipeline import Pipeline, sampling_settings
from videodit.serve.spec import JobSpec
from videodit.video_request import VideoRequest, latent_shape


def step_tokens(spec: JobSpec, pipe: Pipeline) -> int:
    """Tokens the job adds to every denoising forward pass: its latent grid once per pass (conditional, CFG's
    unconditional, skip-layer guidance's)."""
    settings = sampling_settings(pipe.meta, steps=spec.steps, cfg=spec.cfg, sampler=spec.sampler)
    cfg = pipe.dit.config
    vae = pipe.vae
    size = latent_shape(spec.frames, spec.height, spec.width, vae.temporal_stride, vae.spatial_stride)
    passes = 1 + int(settings.cfg != 1.0) + int(settings.skip_guidance > 0)
    return num_tokens(size, tuple(cfg.patch), bool(getattr(cfg, "causal_tubelet", False))) * passes


def check_admission(spec: JobSpec, pipe: Pipeline, token_budget: int, max_memory_gb: float | None) -> int:
    """-> the job's tokens per step; ValueError with the numbers when it cannot run on this server."""
    tokens = step_tokens(spec, pipe)
    if tokens > token_budget:
        raise ValueError(f"{spec.frames} frames of {spec.size} need {tokens} tokens in each denoising step "
                         f"(CFG passes included); this server's per-step budget is {token_budget} "
                         f"(--token-budget): ask for fewer frames or a smaller size")
    check_memory(spec.video_request(Path("sized-only.mp4")), pipe, max_memory_gb)  # nothing is written
    return tokens


def check_memory(request: VideoRequest, pipe: Pipeline, max_memory_gb: float | None) -> None:
    """generate.py's up-front estimate: ValueError with the numbers when the request cannot fit in memory.
    A no-op where `videodit.budget` is not installed."""
    try:
        from videodit import budget
    except ImportError:
        return
    budget.check_fits([request], pipe, max_memory_gb)

