"""generate.py's path for a diffusers WanPipeline folder (`--ckpt <folder with model_index.json>`).

`videodit.pipeline.load_pipeline` loads such a folder through `videodit.wan_pipeline.load_wan_pipeline` and
keeps its scheduler config on the Pipeline; `videodit.pipeline.sample_latents` then hands the requests to
`sample_latents_wan`: prompts and negative prompts (default "") encoded as Wan encodes them (UMT5 states at
the real tokens, zero rows up to 512), denoised by `videodit.wan_sampling.sample_wan` with the folder's
scheduler, every request packed into the same forward passes whatever its shape.

The Wan path takes text-to-video requests only; generate.py refuses our samplers, guidance intervals,
skip-layer guidance, init videos and conditioning frames for it before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WAN_SAMPLING = {"steps": 50, "cfg": 5.0}  # diffusers' WanPipeline defaults


def is_wan_folder(ckpt: str | Path) -> bool:
    """True for a folder holding a diffusers pipeline's model_index.json (validated when it loads)."""
    return str(ckpt) != "default" and (Path(ckpt) / "model_index.json").is_file()


def load_wan_parts(folder: str | Path, vae: str | None, device: torch.device, dtype: torch.dtype):
    """-> (dit, meta, vae, text encoder, scheduler config) of a WanPipeline folder; `vae` (optional) is
    another VAE folder, which must have the transformer's latent channels."""
    from vae3d.io import load_vae
    from videodit.wan_pipeline import check_wan_pipeline, load_wan_pipeline

    folder = Path(folder)
    check_wan_pipeline(folder)
    parts = load_wan_pipeline(folder, device, dtype, vae=vae is None)
    decoder = parts.vae if vae is None else load_vae(vae, device=device, dtype=dtype)
    channels = parts.transformer.config.in_channels
    if decoder.latent_channels != channels:
        raise ValueError(f"--vae {vae!r} has {decoder.latent_channels} latent channels but the Wan "
                         f"transformer of {str(folder)!r} takes {channels}")
    index = json.loads((folder / "model_index.json").read_text())
    meta = {"wan": str(folder), "pipeline": index.get("_class_name"), "sampling": dict(WAN_SAMPLING),
            "random_init": False, "tasks": ["t2v"]}
    return parts.transformer, meta, decoder, parts.text_encoder, parts.scheduler_config


@torch.no_grad()
def sample_latents_wan(pipe, requests, steps: int, guidance: float, token_budget: int,
                       progress: bool = True) -> list[torch.Tensor]:
    """VideoRequests -> one latent (C, T, h, w) each, sampled as diffusers' WanPipeline samples them (the
    noise is each request's seeded `videodit.sampling.initial_noise`)."""
    from videodit.sampling import Request
    from videodit.video_request import latent_shape
    from videodit.wan_sampling import sample_wan
    from videodit.wan_text import TEXT_LEN, encode_prompts, pad_text

    for r in requests:
        if r.init_video is not None or r.image is not None or r.extend is not None:
            raise ValueError(f"{r.out}: a Wan text-to-video model takes no init video, image or extension")
    vae = pipe.vae
    guided = guidance != 1.0
    prompts = [r.prompt for r in requests] + ([r.negative_prompt for r in requests] if guided else [])
    states = [pad_text(s, TEXT_LEN) for s in encode_prompts(pipe.text, prompts, TEXT_LEN)]
    reqs = [Request(size=latent_shape(r.frames, r.height, r.width, vae.temporal_stride, vae.spatial_stride),
                    text=states[i], seed=r.seed, negative=states[len(requests) + i] if guided else None)
            for i, r in enumerate(requests)]
    return sample_wan(pipe.dit, reqs, pipe.scheduler, steps=steps, guidance=guidance, device=pipe.device,
                      dtype=pipe.dtype, token_budget=token_budget, progress=progress)
