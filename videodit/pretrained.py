"""`VideoDiT.from_pretrained`: load a transformer from any supported folder, dispatching on its config.

Supported folders:
  - "default" or our own checkpoint folder (config.json with a "dit" section; videodit.checkpoint),
  - a diffusers `WanTransformer3DModel` folder (config.json + diffusion_pytorch_model.safetensors, or
    sharded `*-0000i-of-0000n.safetensors` with a `.safetensors.index.json`; videodit.wan_diffusers),
  - the original Wan2.1 / Wan2.2 layout (`_class_name: WanModel`, same weight files; videodit.wan_original),
  - a diffusers `WanPipeline` folder (model_index.json): its `transformer/` subfolder.
Weights are read from safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from videodit import wan_diffusers, wan_original
from videodit.model import VideoDiT

PIPELINE_CLASSES = ("WanPipeline",)
SUPPORTED = (
    "our checkpoint folders (config.json with a 'dit' section)",
    f"{wan_diffusers.CLASS_NAME} (diffusers)",
    f"{wan_original.CLASS_NAME} (original Wan2.1/Wan2.2 layout)",
    "WanPipeline folders (model_index.json)",
)


def read_safetensors_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's weights: the shards an `*.safetensors.index.json` lists, else its single
    `*.safetensors` file. ValueError when there is neither, or several files and no index."""
    folder = Path(folder)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(f"{str(folder)!r} holds several safetensors indexes: {[p.name for p in indexes]}")
    if indexes:
        weight_map = json.loads(indexes[0].read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{str(indexes[0])!r} has no weight_map")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ValueError(f"{str(indexes[0])!r} names shard {shard!r}, missing from {str(folder)!r}")
            state.update(load_file(str(folder / shard)))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ValueError(f"the shards of {str(folder)!r} lack {len(missing)} indexed tensors, "
                             f"e.g. {missing[0]}")
        return state
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{str(folder)!r} needs one .safetensors file or a .safetensors.index.json with its "
                         f"shards; found {[p.name for p in files]}")
    return load_file(str(files[0]))


def load_pretrained(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> VideoDiT:
    """A VideoDiT in eval mode from any supported folder (see the module docstring); float32 by default."""
    from videodit.checkpoint import load_dit

    if str(path) == "default":
        model, _ = load_dit("default", device, dtype)
        return model
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder; supported: {'; '.join(SUPPORTED)}")
    if (folder / "model_index.json").is_file():
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
        if name not in PIPELINE_CLASSES:
            raise ValueError(f"{str(folder)!r}: unsupported pipeline _class_name {name!r}; "
                             f"supported: {'; '.join(SUPPORTED)}")
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(folder)!r} has no config.json; supported: {'; '.join(SUPPORTED)}")
    config = json.loads((folder / "config.json").read_text())
    if "dit" in config:
        model, _ = load_dit(folder, device, dtype)
        return model
    name = config.get("_class_name")
    if name == wan_diffusers.CLASS_NAME:
        cfg = wan_diffusers.wan_dit_config(config)  # unsupported variants fail before any weight is read
        state = read_safetensors_folder(folder)
    elif name == wan_original.CLASS_NAME:
        cfg = wan_diffusers.wan_dit_config(wan_original.diffusers_config(config))
        state = wan_original.to_diffusers_state_dict(read_safetensors_folder(folder))
    else:
        raise ValueError(f"{str(folder)!r}: unsupported architecture _class_name {name!r}; "
                         f"supported: {'; '.join(SUPPORTED)}")
    ours = wan_diffusers.to_videodit_state_dict(state, cfg)
    return wan_diffusers.build_from_state_dict(cfg, ours, device, dtype)
