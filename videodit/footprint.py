"""The `videodit.budget.Footprint` of a checkpoint, its VAE and its text encoder, read from their folders
(config.json and the safetensors headers) without reading any weights.

    fp, meta = footprint("default", vae=None, dtype_bytes=4)

Checking a folder here also refuses a broken one (`inspect_dit`, `inspect_vae`) before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from vae3d.io import VAEFolder, inspect_vae
from vae3d.weights_file import parameter_count, read_header
from videodit.budget import DiTShape, Footprint, VAEShape
from videodit.checkpoint import inspect_dit

# Activation floats per decoded pixel of the vae3d decoders (CPU, float32), per chunk tile. The patch
# decoder's cost is its pixel refiner's (r channels): measured for r = 32 on the shipped VAE. A chunk of a
# single frame goes through torch's im2col convolution path, which holds 9 r floats more per pixel.
PATCH_FLOATS = (3.25, 11.0)  # floats per pixel = a * r + b, several frames
PATCH_SINGLE_FRAME_FLOATS = (13.5, 11.0)  # the same for a 1-frame chunk
CONV_FLOATS_PER_CHANNEL = 6.0  # conv decoder (rough): 6 floats per channel of its full-resolution level
DIFFUSERS_PIXEL_BYTES = 2048.0  # adapted diffusers VAEs decode the whole clip at once (rough)


def vae_shape(found: VAEFolder) -> VAEShape:
    """The decoder's memory model for a VAE folder."""
    ts, ss = found.temporal_stride, found.spatial_stride
    if found.class_name != "CausalVAE3D":
        return VAEShape(ts, ss, DIFFUSERS_PIXEL_BYTES, DIFFUSERS_PIXEL_BYTES, tile=0, streamed=False)
    cfg = found.config
    if cfg["arch"] == "patch":
        r = cfg["refine_channels"]
        several = 4 * (PATCH_FLOATS[0] * r + PATCH_FLOATS[1])
        single = 4 * (PATCH_SINGLE_FRAME_FLOATS[0] * r + PATCH_SINGLE_FRAME_FLOATS[1])
        return VAEShape(ts, ss, several, single)
    per_pixel = 4 * (CONV_FLOATS_PER_CHANNEL * cfg["base_channels"] * cfg["channel_mult"][0]
                     / cfg["patch_size"] ** 2 + PATCH_FLOATS[1])
    return VAEShape(ts, ss, per_pixel, 3 * per_pixel)


def text_encoder_parameters(name_or_path: str) -> int:
    """Parameters of a text encoder folder, from its safetensors headers (pickled weights, never loaded
    here, are sized from their file: 4 bytes a parameter)."""
    from videodit.text_encoder import resolve_text_encoder_path

    folder = resolve_text_encoder_path(name_or_path)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return sum(parameter_count(read_header(f)) for f in files)
    return sum(f.stat().st_size for f in folder.glob("*.bin")) // 4


def wan_footprint(folder: Path, vae: str | None, dtype_bytes: int) -> tuple[Footprint, dict]:
    """The Footprint of a diffusers WanPipeline folder: its transformer (config and headers), VAE and UMT5."""
    from videodit.wan_diffusers import wan_dit_config

    try:
        cfg = wan_dit_config(json.loads((folder / "transformer" / "config.json").read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(folder)!r}: cannot read transformer/config.json ({e})") from None
    dit = DiTShape(cfg.hidden_size, cfg.mlp_width, tuple(cfg.patch), False)
    vae_found = inspect_vae(vae or str(folder / "vae"))
    shards = sorted((folder / "transformer").glob("*.safetensors"))
    params = sum(parameter_count(read_header(f)) for f in shards)
    text = text_encoder_parameters(str(folder / "text_encoder"))
    weights = (params + vae_found.parameters + text) * dtype_bytes
    return Footprint(weights, dit, vae_shape(vae_found), dtype_bytes), {}


def footprint(ckpt: str = "default", vae: str | None = None, dtype_bytes: int = 4) -> tuple[Footprint, dict]:
    """(Footprint, the checkpoint's meta) of the DiT checkpoint `ckpt` ("default", a save_dit folder or a
    diffusers WanPipeline folder), the VAE it names (or `vae`) and its text encoder. ValueError naming a
    folder that is broken."""
    if ckpt != "default" and (Path(ckpt) / "model_index.json").is_file():
        return wan_footprint(Path(ckpt), vae, dtype_bytes)
    found = inspect_dit(ckpt)
    cfg = found.config
    dit = DiTShape(cfg.hidden_size, cfg.mlp_width, tuple(cfg.patch), bool(cfg.causal_tubelet))
    vae_found = inspect_vae(vae or found.meta["vae"])
    if vae_found.latent_channels != cfg.in_channels:
        raise ValueError(f"VAE {str(vae_found.folder or 'default')!r} has {vae_found.latent_channels} latent "
                         f"channels; the DiT {ckpt!r} takes {cfg.in_channels}")
    text = text_encoder_parameters(found.meta["text_encoder"])
    weights = (found.parameters + vae_found.parameters + text) * dtype_bytes
    return Footprint(weights, dit, vae_shape(vae_found), dtype_bytes), found.meta



def available_bytes(device, max_memory_gb: float | None) -> int:
    """Bytes a run may use on `device` (a torch.device): `max_memory_gb`, else MemAvailable on the CPU, or the
    GPU's free memory plus the process's base (the GPU holds the weights and the work)."""
    from videodit import budget

    if device.type == "cuda" and max_memory_gb is None:
        import torch

        return torch.cuda.mem_get_info(device)[0] + budget.BASE_BYTES
    return budget.available_memory_bytes(max_memory_gb)
