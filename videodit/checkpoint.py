"""DiT checkpoints: a folder of `config.json` (DiTConfig + meta) and `model.safetensors`.

Saving writes a new versioned sibling folder and then switches `folder`, a symlink, to it in one atomic
step (`vae3d.atomic.replace_folder`): a reader, or a run killed mid-save, never sees half a checkpoint.
Loading reads JSON and safetensors only: no pickled code is ever executed.

meta keys used across the project: "vae" (name/path for vae3d.load_vae), "text_encoder" (name/path),
"flow" (dict of flow shift settings), "random_init" (bool).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vae3d.atomic import replace_folder
from videodit.config import from_dict, to_dict
from videodit.model import DiTConfig, VideoDiT

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def default_meta() -> dict[str, Any]:
    return {"vae": "default", "text_encoder": "default", "flow": {}, "random_init": False}


def save_dit(model: VideoDiT, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `model` (config + weights) and JSON-serialisable `meta` to `folder`, atomically."""
    folder = Path(folder)
    meta = {**default_meta(), **(meta or {})}
    try:
        config_text = json.dumps({"dit": to_dict(model.config), "meta": meta}, indent=2)
    except TypeError as e:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {e}") from e
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with replace_folder(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(config_text)
    return folder


def _random_init(device, dtype) -> tuple[VideoDiT, dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VideoDiT(DiTConfig())
    return model.to(device=device, dtype=dtype).eval(), {**default_meta(), "random_init": True}


def load_dit(
    path: str | Path = "default", device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[VideoDiT, dict[str, Any]]:
    """Load a folder written by `save_dit` -> (model in eval mode, meta).

    "default" -> `videodit/default/` if it holds a checkpoint, else a random-init model of the default
    DiTConfig (seed 0) with meta["random_init"] = True.
    """
    if str(path) == "default":
        if not (DEFAULT_DIR / CONFIG_FILE).is_file():
            return _random_init(device, dtype)
        path = DEFAULT_DIR
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(
            f"{str(folder)!r} is not a DiT checkpoint folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    data = json.loads((folder / CONFIG_FILE).read_text())
    if "dit" not in data:
        raise ValueError(f"{str(folder / CONFIG_FILE)!r} has no 'dit' config section")
    cfg = from_dict(DiTConfig, data["dit"], "dit")
    model = VideoDiT(cfg)
    state = load_file(str(folder / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {str(folder)!r} does not match its config: missing {missing}, "
            f"unexpected {unexpected}"
        )
    model = model.to(device=device, dtype=dtype).eval()
    return model, {**default_meta(), **data.get("meta", {})}
