"""diffusers' `WanTransformer3DModel` format <-> VideoDiT: config, state dict and folders, both ways.

A Wan2.1 / Wan2.2 (T2V, TI2V-5B) transformer is a VideoDiT with Wan's architecture options
(`wan_dit_config`): shared modulation with per-block tables, no text pooling, no null token, QK RMS-norm
across heads, explicit FFN width, integer 3D RoPE (Wan's axis split and pair rotation are ours already).

Parameter correspondence (block i; everything else is copied as is):
  patch_embedding (Conv3d, D x c x pt x ph x pw)  -> x_embedder (Linear over "(c pt ph pw)" tokens)
  condition_embedder.time_embedder.linear_1/2     -> t_embedder.mlp.0/2
  condition_embedder.time_proj                    -> time_proj.1
  condition_embedder.text_embedder.linear_1/2     -> text_proj.0/2
  blocks.i.attn1.to_q / to_k / to_v               -> blocks.i.attn.qkv (rows stacked q, k, v)
  blocks.i.attn1.to_out.0, norm_q, norm_k         -> blocks.i.attn.proj, q_norm, k_norm
  blocks.i.attn2.to_q, to_k / to_v                -> blocks.i.cross.q, cross.kv (rows stacked k, v)
  blocks.i.attn2.to_out.0, norm_q, norm_k         -> blocks.i.cross.proj, q_norm, k_norm
  blocks.i.norm2 (the affine cross-attention norm)-> blocks.i.norm_cross
  blocks.i.ffn.net.0.proj / ffn.net.2             -> blocks.i.mlp.0 / mlp.2
  blocks.i.scale_shift_table (1, 6, D)            -> blocks.i.modulation (6, D)
  scale_shift_table (1, 2, D)                     -> final_layer.modulation (2, D)
  proj_out (rows ordered "(pt ph pw c)")          -> final_layer.linear (rows ordered "(c pt ph pw)")

Timesteps: VideoDiT's t in [0, 1] is diffusers' timestep / 1000.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from safetensors.torch import save_file

from vae3d.atomic import replace_folder
from videodit.model import DiTConfig, VideoDiT

CLASS_NAME = "WanTransformer3DModel"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"

# Each block's linear layers: ours -> diffusers' (several when ours stacks their rows, in that order).
BLOCK_LINEARS: dict[str, tuple[str, ...]] = {
    "attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "attn.proj": ("attn1.to_out.0",),
    "cross.q": ("attn2.to_q",),
    "cross.kv": ("attn2.to_k", "attn2.to_v"),
    "cross.proj": ("attn2.to_out.0",),
    "mlp.0": ("ffn.net.0.proj",),
    "mlp.2": ("ffn.net.2",),
}
BLOCK_PARAMS: dict[str, str] = {
    "attn.q_norm.weight": "attn1.norm_q.weight",
    "attn.k_norm.weight": "attn1.norm_k.weight",
    "cross.q_norm.weight": "attn2.norm_q.weight",
    "cross.k_norm.weight": "attn2.norm_k.weight",
    "norm_cross.weight": "norm2.weight",
    "norm_cross.bias": "norm2.bias",
}
TOP_LINEARS: dict[str, str] = {
    "t_embedder.mlp.0": "condition_embedder.time_embedder.linear_1",
    "t_embedder.mlp.2": "condition_embedder.time_embedder.linear_2",
    "time_proj.1": "condition_embedder.time_proj",
    "text_proj.0": "condition_embedder.text_embedder.linear_1",
    "text_proj.2": "condition_embedder.text_embedder.linear_2",
}
# Keys diffusers itself ignores when loading this class.
IGNORED_KEYS = ("norm_added_q",)


def wan_dit_config(config: dict[str, Any]) -> DiTConfig:
    """A diffusers `WanTransformer3DModel` config dict -> the DiTConfig of the same architecture.

    Raises ValueError for the variants VideoDiT does not express (image branch of the I2V models, other
    QK norms, no cross-attention norm, out_channels != in_channels)."""
    name = config.get("_class_name", CLASS_NAME)
    if name != CLASS_NAME:
        raise ValueError(f"expected a {CLASS_NAME} config, got _class_name {name!r}")
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
        raise ValueError("Wan image-to-video transformers (image_dim / added_kv_proj_dim set) are not "
                         "supported; supported: text-to-video Wan2.1 and Wan2.2 TI2V-5B")
    if config.get("pos_embed_seq_len") is not None:
        raise ValueError(f"pos_embed_seq_len={config['pos_embed_seq_len']} (an image-branch option) is not "
                         "supported; supported: null")
    qk = config.get("qk_norm", "rms_norm_across_heads")
    if qk != "rms_norm_across_heads":
        raise ValueError(f"qk_norm={qk!r} is not supported; supported: 'rms_norm_across_heads'")
    if not config.get("cross_attn_norm", True):
        raise ValueError("cross_attn_norm=false is not supported; supported: true")
    in_ch = int(config.get("in_channels", 16))
    out_ch = config.get("out_channels") or in_ch
    if int(out_ch) != in_ch:
        raise ValueError(f"out_channels={out_ch} differs from in_channels={in_ch}; VideoDiT needs them equal")
    heads = int(config.get("num_attention_heads", 40))
    return DiTConfig(
        in_channels=in_ch,
        text_dim=int(config.get("text_dim", 4096)),
        hidden_size=heads * int(config.get("attention_head_dim", 128)),
        depth=int(config.get("num_layers", 40)),
        num_heads=heads,
        patch=tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
        rope="integer",
        rope_theta=10000.0,
        prediction="velocity",
        frequency_embedding_size=int(config.get("freq_dim", 256)),
        norm_eps=float(config.get("eps", 1e-6)),
        modulation="shared",
        text_pooling=False,
        null_text=False,
        qk_norm="across_heads",
        ffn_dim=int(config.get("ffn_dim", 13824)),
    )


ARCHITECTURE_FIELDS = ("in_channels", "text_dim", "hidden_size", "depth", "num_heads", "patch", "rope",
                       "rope_theta", "prediction", "frequency_embedding_size", "norm_eps", "modulation",
                       "text_pooling", "null_text", "qk_norm", "mlp_width")


def is_wan_config(cfg: DiTConfig) -> bool:
    """True when `cfg` is an architecture diffusers' WanTransformer3DModel can hold (runtime options such as
    the attention backend or gradient checkpointing aside)."""
    try:
        wan = wan_dit_config(diffusers_config(cfg))
    except ValueError:
        return False
    return all(getattr(cfg, f) == getattr(wan, f) for f in ARCHITECTURE_FIELDS)


def diffusers_config(cfg: DiTConfig) -> dict[str, Any]:
    """The `WanTransformer3DModel` config dict of a VideoDiT built with Wan's options."""
    return {
        "_class_name": CLASS_NAME,
        "patch_size": list(cfg.patch),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.frequency_embedding_size,
        "ffn_dim": cfg.mlp_width,
        "num_layers": cfg.depth,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": cfg.norm_eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }


def _plan(cfg: DiTConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """(our key, diffusers keys, how) for every parameter; how: copy, stack, patch_in, patch_out, table."""
    plan: list[tuple[str, tuple[str, ...], str]] = []
    for suffix in ("weight", "bias"):
        plan.append((f"x_embedder.{suffix}", (f"patch_embedding.{suffix}",), "patch_in"))
        plan.append((f"final_layer.linear.{suffix}", (f"proj_out.{suffix}",), "patch_out"))
        for ours, theirs in TOP_LINEARS.items():
            plan.append((f"{ours}.{suffix}", (f"{theirs}.{suffix}",), "copy"))
        for i in range(cfg.depth):
            for ours, theirs in BLOCK_LINEARS.items():
                keys = tuple(f"blocks.{i}.{t}.{suffix}" for t in theirs)
                plan.append((f"blocks.{i}.{ours}.{suffix}", keys, "stack" if len(keys) > 1 else "copy"))
    for i in range(cfg.depth):
        for ours, theirs in BLOCK_PARAMS.items():
            plan.append((f"blocks.{i}.{ours}", (f"blocks.{i}.{theirs}",), "copy"))
        plan.append((f"blocks.{i}.modulation", (f"blocks.{i}.scale_shift_table",), "table"))
    plan.append(("final_layer.modulation", ("scale_shift_table",), "table"))
    return plan


def _patch_out_rows(x: torch.Tensor, cfg: DiTConfig, to_ours: bool) -> torch.Tensor:
    """Reorder the output head's rows (weight `(D_in, D)` or bias `(D_in,)`) between the two layouts."""
    pt, ph, pw = cfg.patch
    flat = x.reshape(x.shape[0], -1)  # (D_in, D or 1)
    if to_ours:
        flat = rearrange(flat, "(pt ph pw c) d -> (c pt ph pw) d", pt=pt, ph=ph, pw=pw)
    else:
        flat = rearrange(flat, "(c pt ph pw) d -> (pt ph pw c) d", pt=pt, ph=ph, pw=pw)
    return flat.reshape(x.shape)


def to_videodit_state_dict(state: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """A WanTransformer3DModel state dict -> VideoDiT's (for `cfg = wan_dit_config(...)`).

    Consumes `state`: each entry is removed as it is converted, so a large checkpoint is not held twice.
    Raises ValueError naming missing or unexpected keys before converting anything."""
    for key in [k for k in state if any(s in k for s in IGNORED_KEYS)]:
        del state[key]
    plan = _plan(cfg)
    needed = {k for _, theirs, _ in plan for k in theirs}
    missing, unexpected = sorted(needed - set(state)), sorted(set(state) - needed)
    if missing or unexpected:
        raise ValueError(f"not a {CLASS_NAME} state dict of this config: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    out = {}
    for ours, theirs, how in plan:
        parts = [state.pop(k) for k in theirs]
        if how == "stack":
            out[ours] = torch.cat(parts)
        elif how == "patch_in":
            out[ours] = parts[0].reshape(parts[0].shape[0], -1) if parts[0].dim() == 5 else parts[0]
        elif how == "patch_out":
            out[ours] = _patch_out_rows(parts[0], cfg, to_ours=True)
        elif how == "table":
            out[ours] = parts[0].reshape(parts[0].shape[-2:])
        else:
            out[ours] = parts[0]
    return out


def to_diffusers_state_dict(state: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """VideoDiT's state dict (Wan options) -> a WanTransformer3DModel state dict (contiguous tensors)."""
    out = {}
    for ours, theirs, how in _plan(cfg):
        x = state[ours]
        if how == "stack":
            for key, part in zip(theirs, x.chunk(len(theirs))):
                out[key] = part
        elif how == "patch_in":
            out[theirs[0]] = x.reshape(x.shape[0], cfg.in_channels, *cfg.patch) if x.dim() == 2 else x
        elif how == "patch_out":
            out[theirs[0]] = _patch_out_rows(x, cfg, to_ours=False)
        elif how == "table":
            out[theirs[0]] = x[None]
        else:
            out[theirs[0]] = x
    return {k: v.detach().contiguous() for k, v in out.items()}


def build_from_state_dict(
    cfg: DiTConfig, state: dict[str, torch.Tensor], device=None, dtype: torch.dtype | None = None
) -> VideoDiT:
    """VideoDiT(cfg) holding `state` (ours), built without a random init, in eval mode (float32 default)."""
    with torch.device("meta"):
        model = VideoDiT(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def save_diffusers_transformer(model: VideoDiT, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a diffusers WanTransformer3DModel folder (config.json + safetensors), atomically.

    `WanTransformer3DModel.from_pretrained(folder)` (and so a WanPipeline with it as `transformer/`) loads
    it. LoRA layers must be merged first (videodit.lora.merge_lora)."""
    cfg = model.config
    if not is_wan_config(cfg):
        raise ValueError("only a VideoDiT with Wan's architecture options (as loaded from a Wan checkpoint) "
                         "can be saved as a WanTransformer3DModel")
    state = model.state_dict()
    lora = [k for k in state if "lora_" in k or "base_layer" in k]
    if lora:
        raise ValueError(f"the model still holds LoRA layers ({lora[0]}); merge them before exporting")
    tensors = to_diffusers_state_dict(state, cfg)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    import diffusers

    config = {**diffusers_config(cfg), "_diffusers_version": diffusers.__version__}
    folder = Path(folder)
    tensors = {k: v.cpu() for k, v in tensors.items()}
    with replace_folder(folder) as tmp:  # a versioned folder, then one atomic switch of the `folder` symlink
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return folder
