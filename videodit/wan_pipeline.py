"""A diffusers `WanPipeline` folder as this project's parts: the transformer as a VideoDiT, the VAE through
vae3d's diffusers adapter, the UMT5 text encoder with its tokenizer, and the scheduler config.

The folder is what `WanPipeline.save_pretrained` writes (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers,
Wan2.2-TI2V-5B-Diffusers): model_index.json plus transformer/, vae/, text_encoder/, tokenizer/, scheduler/.
Everything is read locally; nothing downloads. Sample with videodit.wan_sampling.sample_wan, feeding text
from `WanParts.encode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videodit import wan_diffusers
from videodit.model import VideoDiT
from videodit.text_encoder import TextEncoder
from videodit.wan_sampling import scheduler_from_config
from videodit.wan_text import TEXT_LEN, encode_prompts, pad_text

SUPPORTED_PIPELINES = ("WanPipeline",)
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class WanParts:
    """The parts of a loaded WanPipeline folder (`vae` / `text_encoder` None when not requested)."""

    folder: Path
    transformer: VideoDiT
    vae: nn.Module | None
    text_encoder: TextEncoder | None
    scheduler_config: dict[str, Any]

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """prompts -> Wan text `(512, text_dim)` each: real-token UMT5 states, then zero rows."""
        if self.text_encoder is None:
            raise ValueError("this WanParts was loaded without its text encoder (text_encoder=False)")
        return [pad_text(s, TEXT_LEN) for s in encode_prompts(self.text_encoder, prompts, TEXT_LEN)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: not a complete diffusers WanPipeline folder")
    return json.loads(path.read_text())


def check_wan_pipeline(folder: str | Path) -> dict[str, Any]:
    """Validate a WanPipeline folder from its JSON files alone -> its model_index dict.

    One-line ValueErrors for: another pipeline class (naming it and the supported ones), Wan2.2's
    two-expert A14B layout, a missing component, a transformer whose channels differ from the VAE's
    latent channels, a text encoder whose width differs from the transformer's text_dim."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    name = index.get("_class_name")
    if name not in SUPPORTED_PIPELINES:
        raise ValueError(f"{str(folder)!r}: unsupported pipeline _class_name {name!r}; "
                         f"supported: {', '.join(SUPPORTED_PIPELINES)}")
    expert = index.get("transformer_2")
    if index.get("boundary_ratio") is not None or (isinstance(expert, list) and any(expert)):
        raise ValueError(f"{str(folder)!r} is a two-expert Wan2.2 A14B pipeline (transformer_2 / "
                         "boundary_ratio), which is not supported; supported: one-transformer WanPipeline "
                         "folders")
    for part in COMPONENTS:
        if not (folder / part).is_dir():
            raise ValueError(f"{str(folder)!r} has no {part}/ folder; a WanPipeline folder needs "
                             f"{', '.join(COMPONENTS)}")
    cfg = wan_diffusers.wan_dit_config(_read_json(folder / "transformer" / "config.json"))
    vae_cfg = _read_json(folder / "vae" / "config.json")
    z_dim = vae_cfg.get("z_dim", vae_cfg.get("latent_channels"))
    if z_dim != cfg.in_channels:
        raise ValueError(f"transformer in_channels={cfg.in_channels} does not match the VAE's latent "
                         f"channels {z_dim} ({vae_cfg.get('_class_name')}); they must be equal")
    text_cfg = _read_json(folder / "text_encoder" / "config.json")
    width = text_cfg.get("d_model", text_cfg.get("hidden_size"))
    if width != cfg.text_dim:
        raise ValueError(f"text encoder width {width} does not match the transformer's "
                         f"text_dim={cfg.text_dim}")
    scheduler_from_config(_read_json(folder / "scheduler" / "scheduler_config.json"))
    return index


def load_wan_pipeline(
    folder: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    vae: bool = True,
    text_encoder: bool = True,
) -> WanParts:
    """Load a diffusers WanPipeline folder (validated by `check_wan_pipeline` first) -> WanParts, every part
    on `device` in `dtype` (float32 by default), in eval mode."""
    from vae3d.io import load_vae

    folder = Path(folder)
    check_wan_pipeline(folder)
    transformer = VideoDiT.from_pretrained(folder / "transformer", device, dtype)
    return WanParts(
        folder=folder,
        transformer=transformer,
        vae=load_vae(folder / "vae", device, dtype) if vae else None,
        text_encoder=TextEncoder(folder / "text_encoder", max_length=TEXT_LEN, device=device, dtype=dtype,
                                 tokenizer_path=folder / "tokenizer") if text_encoder else None,
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json"),
    )
