"""Save and load VAEs: a folder = config.json + model.safetensors (no pickles), written atomically."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .adapters import ADAPTED_CLASSES, DiffusersVAEAdapter, _strides_and_stats
from .atomic import recover_folder, replace_folder
from .config import VAEConfig
from .model import CausalVAE3D
from .weights_file import mismatches, parameter_count, read_header

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


@dataclass
class VAEFolder:
    """A VAE folder as its config and weights header describe it (no weights read)."""

    folder: Path | None  # None: the built-in random-init default
    class_name: str  # "CausalVAE3D" or an adapted diffusers class
    config: dict
    parameters: int
    temporal_stride: int
    spatial_stride: int
    latent_channels: int


def _read_config(folder: Path) -> dict:
    try:
        info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(folder / 'config.json')!r} is not readable JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{str(folder / 'config.json')!r} is not a JSON object")
    return info


def _vae_folder(name_or_path: str | Path) -> Path:
    folder = Path(name_or_path)
    if not folder.exists() and not folder.is_symlink():
        recover_folder(folder)  # a save killed while turning a plain folder into a pointer
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(name_or_path)!r} is not 'default' or a VAE folder with config.json")
    return folder


def inspect_vae(name_or_path: str | Path = "default") -> VAEFolder:
    """Check a VAE folder without reading its weights -> what it holds. ValueError naming the folder and
    the problem (unreadable config, unknown class or keys, weights missing, truncated, garbage, or not the
    shapes the config makes; pickled weights, which are never loaded)."""
    import torch

    if str(name_or_path) == "default":
        if not (DEFAULT_DIR / WEIGHTS).is_file():
            cfg = VAEConfig()
            return VAEFolder(None, "CausalVAE3D", dataclasses.asdict(cfg), _count(cfg), cfg.temporal_stride,
                             cfg.spatial_stride, cfg.latent_channels)
        name_or_path = DEFAULT_DIR
    folder = _vae_folder(name_or_path)
    info = _read_config(folder)
    name = info.get("_class_name")
    if name == "CausalVAE3D":
        try:
            cfg = VAEConfig(**info["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{str(folder)!r}: config.json does not describe a CausalVAE3D ({e})") from None
        header = read_header(folder / WEIGHTS)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in CausalVAE3D(cfg).state_dict().items()}
        bad = mismatches(header, expected)
        if bad:
            raise ValueError(f"{str(folder / WEIGHTS)!r} does not match its config.json: {'; '.join(bad)}")
        return VAEFolder(folder, name, dataclasses.asdict(cfg), parameter_count(header), cfg.temporal_stride,
                         cfg.spatial_stride, cfg.latent_channels)
    if name in ADAPTED_CLASSES:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise ValueError(f"{str(folder)!r} has no .safetensors weights"
                             + (f" (pickled weights {pickled} are never loaded)" if pickled else ""))
        count = sum(parameter_count(read_header(f)) for f in files)
        import diffusers

        try:
            with torch.device("meta"):
                vae = getattr(diffusers, name).from_config({k: v for k, v in info.items()
                                                            if not k.startswith("_")})
                ts, ss, c, _, _ = _strides_and_stats(vae, name)
        except Exception as e:  # diffusers raises many types for a config it cannot build
            raise ValueError(f"{str(folder)!r}: its {name} config.json cannot be built ({type(e).__name__}: "
                             f"{e})") from None
        return VAEFolder(folder, name, info, count, ts, ss, c)
    raise ValueError(f"{str(folder)!r}: unsupported VAE class {name!r}; "
                     f"expected CausalVAE3D or one of {', '.join(ADAPTED_CLASSES)}")


def _count(cfg: VAEConfig) -> int:
    import torch

    with torch.device("meta"):
        return sum(v.numel() for v in CausalVAE3D(cfg).state_dict().values())


def load_vae(name_or_path: str | Path = "default", device=None, dtype=None) -> torch.nn.Module:
    """"default", a folder written by save_vae, or a diffusers video-VAE folder (or pipeline with vae/).
    The folder is checked first (`inspect_vae`); a broken one is a ValueError naming it."""
    if str(name_or_path) == "default":
        if (DEFAULT_DIR / WEIGHTS).is_file():
            return load_vae(DEFAULT_DIR, device, dtype)
        model = CausalVAE3D(VAEConfig())
        model.is_random_init = True
        return _finish(model, device, dtype)
    found = inspect_vae(name_or_path)
    folder = found.folder
    if found.class_name == "CausalVAE3D":
        model = CausalVAE3D(VAEConfig(**found.config))
        try:
            model.load_state_dict(load_file(str(folder / WEIGHTS)))
        except Exception as e:  # safetensors' own error type for a file that changed under us
            raise ValueError(f"cannot load {str(folder / WEIGHTS)!r}: {type(e).__name__}: {e}") from None
        model.is_random_init = False
        return _finish(model, device, dtype)
    import diffusers

    try:
        vae = getattr(diffusers, found.class_name).from_pretrained(str(folder), use_safetensors=True)
    except Exception as e:  # diffusers raises many types for a folder it cannot load
        raise ValueError(f"cannot load the {found.class_name} in {str(folder)!r}: {type(e).__name__}: "
                         f"{e}") from None
    return _finish(DiffusersVAEAdapter(vae), device, dtype)
