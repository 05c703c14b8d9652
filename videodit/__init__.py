"""videodit: a NaViT-packed text-to-video diffusion transformer.

    from videodit import VideoDiT, DiTConfig, pack, unpack, sample, Request
    from videodit import load_pipeline, sampling_settings, VideoRequest, generate

Names are imported from their modules on first use, so `import videodit` (and the light request checks in
`videodit.video_request`) do not pull in torch or diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DiTConfig": "videodit.model",
    "VideoDiT": "videodit.model",
    "dit_config": "videodit.model",
    "spacetime_patchify": "videodit.patchify",
    "spacetime_unpatchify": "videodit.patchify",
    "PackedBatch": "videodit.packing",
    "pack": "videodit.packing",
    "unpack": "videodit.packing",
    "FlowConfig": "videodit.flow",
    "flow_loss": "videodit.flow",
    "Request": "videodit.sampling",
    "SAMPLERS": "videodit.sampling",
    "sample": "videodit.sampling",
    "load_dit": "videodit.checkpoint",
    "save_dit": "videodit.checkpoint",
    "TextEncoder": "videodit.text_encoder",
    "VideoRequest": "videodit.video_request",
    "Pipeline": "videodit.pipeline",
    "SamplingSettings": "videodit.pipeline",
    "decode_to_mp4": "videodit.pipeline",
    "generate": "videodit.pipeline",
    "load_pipeline": "videodit.pipeline",
    "sample_latents": "videodit.pipeline",
    "sampling_settings": "videodit.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videodit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
