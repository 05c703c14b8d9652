"""DiT checkpoints: a folder of `config.json` (DiTConfig + meta) and `model.safetensors`.

Saving writes a new versioned sibling folder and then switches `folder`, a symlink, to it in one atomic
step (`vae3d.atomic.replace_folder`): a reader, or a run killed mid-save, never sees half a checkpoint.
Loading reads JSON and safetensors only: no pickled code is ever executed.

meta keys used across the project: "vae" (name/path for vae3d.load_vae), "text_encoder" (name/path),
"flow" (dict of flow shift settings), "random_init" (bool).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vae3d.atomic import recover_folder, replace_folder
from vae3d.weights_file import mismatches, parameter_count, read_header
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


@dataclass
class DiTFolder:
    """A DiT checkpoint folder as its config and weights header describe it (no weights read)."""

    folder: Path | None  # None: the random-init default (no shipped weights)
    config: DiTConfig
    meta: dict[str, Any]
    parameters: int


def inspect_dit(path: str | Path = "default") -> DiTFolder:
    """Check a checkpoint folder without reading its weights -> its config, meta and parameter count.
    ValueError naming the folder and the problem (no config or weights, unreadable or unknown config,
    weights truncated, garbage or not the shapes the config makes)."""
    if str(path) == "default":
        if not (DEFAULT_DIR / CONFIG_FILE).is_file():
            cfg = DiTConfig()
            with torch.device("meta"):
                count = sum(v.numel() for v in VideoDiT(cfg).state_dict().values())
            return DiTFolder(None, cfg, {**default_meta(), "random_init": True}, count)
        path = DEFAULT_DIR
    folder = Path(path)
    if not folder.exists() and not folder.is_symlink():
        recover_folder(folder)  # a save killed while turning a plain folder into a pointer
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(
            f"{str(folder)!r} is not a DiT checkpoint folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(folder / CONFIG_FILE)!r} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("dit"), dict):
        raise ValueError(f"{str(folder / CONFIG_FILE)!r} has no 'dit' config section")
    if not isinstance(data.get("meta", {}), dict):
        raise ValueError(f"{str(folder / CONFIG_FILE)!r}: 'meta' must be a JSON object")
    try:
        cfg = from_dict(DiTConfig, data["dit"], "dit")
    except ValueError as e:
        raise ValueError(f"{str(folder / CONFIG_FILE)!r}: {e}") from None
    header = read_header(folder / WEIGHTS_FILE)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VideoDiT(cfg).state_dict().items()}
    bad = mismatches(header, expected)
    if bad:
        raise ValueError(f"checkpoint {str(folder)!r} does not match its config: {'; '.join(bad)}")
    return DiTFolder(folder, cfg, {**default_meta(), **data.get("meta", {})}, parameter_count(header))


def load_dit(
    path: str | Path = "default", device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[VideoDiT, dict[str, Any]]:
    """Load a folder written by `save_dit` -> (model in eval mode, meta). The folder is checked first
    (`inspect_dit`): a broken one is a ValueError naming it.

    "default" -> `videodit/default/` if it holds a checkpoint, else a random-init model of the default
    DiTConfig (seed 0) with meta["random_init"] = True.
    """
    found = inspect_dit(path)
    if found.folder is None:
        return _random_init(device, dtype)
    model = VideoDiT(found.config)
    weights = found.folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors' own error type for a file that changed under us
        raise ValueError(f"cannot load {str(weights)!r}: {type(e).__name__}: {e}") from None
    model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype).eval()
    return model, found.meta
