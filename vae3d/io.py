"""Save and load VAEs: a folder = config.json + model.safetensors (no pickles), written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .adapters import ADAPTED_CLASSES, DiffusersVAEAdapter
from .config import VAEConfig
from .model import CausalVAE3D

DEFAULT_DIR = Path(__file__).parent / "default"
WEIGHTS = "model.safetensors"


def save_vae(model: CausalVAE3D, folder: str | Path, meta: dict | None = None) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` via a temp folder renamed into place."""
    if not isinstance(model, CausalVAE3D):
        raise ValueError(f"save_vae saves CausalVAE3D models, got {type(model).__name__}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        info = {"_class_name": "CausalVAE3D", "config": dataclasses.asdict(model.config), "meta": meta or {}}
        (tmp / "config.json").write_text(json.dumps(info, indent=2))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
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
