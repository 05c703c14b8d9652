"""The original Wan2.1 / Wan2.2 checkpoint layout (`WanModel`, as the Wan-AI repositories ship it) ->
diffusers' `WanTransformer3DModel` names, from which videodit.wan_diffusers builds a VideoDiT.

Key names follow diffusers' own single-file conversion (`convert_wan_transformer_to_diffusers`):
  patch_embedding.*               -> patch_embedding.*
  text_embedding.0 / .2           -> condition_embedder.text_embedder.linear_1 / linear_2
  time_embedding.0 / .2           -> condition_embedder.time_embedder.linear_1 / linear_2
  time_projection.1               -> condition_embedder.time_proj
  blocks.i.self_attn / cross_attn -> blocks.i.attn1 / attn2, with q, k, v, o -> to_q, to_k, to_v, to_out.0
                                     (norm_q, norm_k keep their names)
  blocks.i.norm3 (cross-attn norm)-> blocks.i.norm2    (the original's norm1/norm2 have no parameters)
  blocks.i.ffn.0 / ffn.2          -> blocks.i.ffn.net.0.proj / ffn.net.2
  blocks.i.modulation             -> blocks.i.scale_shift_table
  head.head / head.modulation     -> proj_out / scale_shift_table
A "model.diffusion_model." (or "diffusion_model.") prefix, as single-file repackagings carry, is dropped.

The config.json of such a folder (`_class_name: WanModel`) names dim, ffn_dim, freq_dim, in_dim, out_dim,
num_heads, num_layers, eps, model_type and optionally text_dim (4096), patch_size ((1, 2, 2)).
"""

from __future__ import annotations

from typing import Any

import torch

CLASS_NAME = "WanModel"
SUPPORTED_MODEL_TYPES = ("t2v", "ti2v")
PREFIXES = ("model.diffusion_model.", "diffusion_model.")

TOP_RENAMES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
ATTENTION_RENAMES = {"self_attn": "attn1", "cross_attn": "attn2"}
PROJECTION_RENAMES = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q",
                      "norm_k": "norm_k"}
BLOCK_RENAMES = {"norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
                 "modulation": "scale_shift_table"}


def diffusers_config(config: dict[str, Any]) -> dict[str, Any]:
    """An original `WanModel` config.json dict -> the equivalent WanTransformer3DModel config dict."""
    model_type = config.get("model_type", "t2v")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"Wan model_type {model_type!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    window = tuple(config.get("window_size", (-1, -1)))
    if window != (-1, -1):
        raise ValueError(f"windowed attention window_size={list(window)} is not supported; "
                         "supported: [-1, -1]")
    for key in ("dim", "num_heads", "num_layers", "in_dim", "ffn_dim"):
        if key not in config:
            raise ValueError(f"Wan config is missing {key!r}")
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(config.get("patch_size", (1, 2, 2))),
        "num_attention_heads": int(config["num_heads"]),
        "attention_head_dim": int(config["dim"]) // int(config["num_heads"]),
        "in_channels": int(config["in_dim"]),
        "out_channels": int(config.get("out_dim", config["in_dim"])),
        "text_dim": int(config.get("text_dim", 4096)),
        "freq_dim": int(config.get("freq_dim", 256)),
        "ffn_dim": int(config["ffn_dim"]),
        "num_layers": int(config["num_layers"]),
        "cross_attn_norm": bool(config.get("cross_attn_norm", True)),
        "qk_norm": "rms_norm_across_heads" if config.get("qk_norm", True) else None,
        "eps": float(config.get("eps", 1e-6)),
    }


def rename_key(key: str) -> str:
    """One original Wan key -> its WanTransformer3DModel name; ValueError for a key of no T2V layout."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for old, new in TOP_RENAMES.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "blocks":
        head = f"blocks.{parts[1]}"
        if len(parts) >= 5 and parts[2] in ATTENTION_RENAMES and parts[3] in PROJECTION_RENAMES:
            tail = ".".join(parts[4:])
            return f"{head}.{ATTENTION_RENAMES[parts[2]]}.{PROJECTION_RENAMES[parts[3]]}.{tail}"
        rest = ".".join(parts[2:])
        for old, new in BLOCK_RENAMES.items():
            if rest == old or rest.startswith(old + "."):
                return f"{head}.{new}{rest[len(old):]}"
    raise ValueError(f"unexpected key {key!r} in an original Wan checkpoint (text-to-video layouts only)")


def to_diffusers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan2.1 / Wan2.2 transformer state dict -> WanTransformer3DModel names (tensors unchanged)."""
    out = {}
    for key, value in state.items():
        new = rename_key(key)
        if new in out:
            raise ValueError(f"two keys of the Wan checkpoint map to {new!r}")
        out[new] = value
    return out
