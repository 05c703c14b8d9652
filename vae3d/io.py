"""Save and load VAEs: a folder = config.json + model.safetensors (no pickles), written atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .adapters import ADAPTED_CLASSES, DiffusersVAEAdapter
from .atomic import replace_folder
from .config import VAEConfig
from .model import CausalVAE3D

DEFAULT_DIR = Path(__file__).parent / "default"
WEIGHTS = "model.safetensors"


def save_vae(model: CausalVAE3D, folder: str | Path, meta: dict | None = None) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` as one atomic step
    (`vae3d.atomic.replace_folder`: `folder` becomes a symlink to a complete versioned sibling)."""
    if not isinstance(model, CausalVAE3D):
        raise ValueError(f"save_vae saves CausalVAE3D models, got {type(model).__name__}")
    folder = Path(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    info = {"_class_name": "CausalVAE3D", "config": dataclasses.asdict(model.config), "meta": meta or {}}
    with replace_folder(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / "config.json").write_text(json.dumps(info, indent=2))
    return folder


def _finish(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    model = model.eval()
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def load_vae(name_or_path: str | Path = "default", device=None, dtype=None) -> torch.nn.Module:
    """"default", a folder written by save_vae, or a diffusers video-VAE folder (or pipeline with vae/)."""
    if str(name_or_path) == "default":
        if (DEFAULT_DIR / WEIGHTS).is_file():
            return load_vae(DEFAULT_DIR, device, dtype)
        model = CausalVAE3D(VAEConfig())
        model.is_random_init = True
        return _finish(model, device, dtype)
    folder = Path(name_or_path)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(name_or_path)!r} is not 'default' or a VAE folder with config.json")
    info = json.loads((folder / "config.json").read_text())
    name = info.get("_class_name")
    if name == "CausalVAE3D":
        model = CausalVAE3D(VAEConfig(**info["config"]))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        model.is_random_init = False
        return _finish(model, device, dtype)
    if name in ADAPTED_CLASSES:
        import diffusers

        vae = getattr(diffusers, name).from_pretrained(str(folder))
        return _finish(DiffusersVAEAdapter(vae), device, dtype)
    raise ValueError(f"{str(folder)!r}: unsupported VAE class {name!r}; "
                     f"expected CausalVAE3D or one of {', '.join(ADAPTED_CLASSES)}")
