"""Fine-tuning a pretrained Wan transformer in train_video.py (`train.init_from=<Wan folder>`).

The architecture comes from the folder (`VideoDiT.from_pretrained`), not the run config's model section:
`wan_model_config` takes the folder's and keeps only the config's runtime options (attention backend,
gradient checkpointing); a model key the config sets to something else is refused in one line.

Text is Wan's (videodit.wan_text): prompts are encoded to their real-token UMT5 states (what a latent
cache stores), padded to 512 rows when a row is built, and a sample whose text is dropped for
classifier-free guidance gets the padded encoding of "" (Wan has no learned null token).

With `model.lora.rank` > 0 only LoRA layers (peft) train; the export is the LoRA as one diffusers/PEFT
safetensors file (`lora.safetensors`, what `WanPipeline.load_lora_weights` loads). A full fine-tune
exports `transformer/` as a diffusers `WanTransformer3DModel` folder; when the run started from a
WanPipeline folder the export is a WanPipeline folder itself (model_index.json, and links to the base
folder's vae/, text_encoder/, tokenizer/ and scheduler/), so generate.py --ckpt takes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from videodit import wan_diffusers, wan_original
from videodit.lora import LoRAConfig, add_lora, save_lora
from videodit.model import DiTConfig, VideoDiT
from videodit.text_encoder import TextEncoder
from videodit.wan_text import TEXT_LEN, encode_prompts, pad_text

RUNTIME_FIELDS = ("attention", "grad_checkpointing")  # model keys a run may set for a pretrained Wan
LORA_FILE = "lora.safetensors"
PIPELINE_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")
# Wan2.1's scheduler (diffusers' Wan2.1-T2V folders), for previews of a model loaded without its pipeline.
DEFAULT_SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
                     "use_flow_sigmas": True, "num_train_timesteps": 1000, "flow_shift": 3.0}


def transformer_config(path: str | Path) -> dict | None:
    """The diffusers-style transformer config of a Wan folder (WanPipeline, WanTransformer3DModel or the
    original WanModel layout), or None when `path` is none of them."""
    folder = Path(path)
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        if index.get("_class_name") != "WanPipeline":
            return None
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") == wan_diffusers.CLASS_NAME:
        return config
    if config.get("_class_name") == wan_original.CLASS_NAME:
        return wan_original.diffusers_config(config)
    return None


def is_wan_folder(path: str | Path) -> bool:
    return bool(path) and transformer_config(path) is not None


def is_pipeline_folder(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def wan_model_config(folder: str | Path, given: DiTConfig, keys: set[str] | None = None) -> DiTConfig:
    """The Wan folder's DiTConfig with `given`'s runtime options. ValueError naming every architecture key
    the run config sets (`keys`, the model keys its YAML and overrides name; None: those where `given`
    differs from DiTConfig's default) to a value other than the folder's."""
    wan = wan_diffusers.wan_dit_config(transformer_config(folder))
    default = DiTConfig()
    named = [f.name for f in dataclasses.fields(DiTConfig) if f.name not in RUNTIME_FIELDS
             and (f.name in keys if keys is not None else getattr(given, f.name) != getattr(default, f.name))]
    bad = [f"model.{k}={getattr(given, k)!r} (the folder has {getattr(wan, k)!r})" for k in named
           if getattr(given, k) != getattr(wan, k)]
    if bad:
        raise ValueError(f"train.init_from {str(folder)!r} sets the model architecture, and the config's "
                         f"model section contradicts it: {'; '.join(bad)}; remove those keys")
    return dataclasses.replace(wan, **{k: getattr(given, k) for k in RUNTIME_FIELDS})


def load_for_training(folder: str | Path, cfg: DiTConfig, lora: LoRAConfig) -> VideoDiT:
    """The pretrained Wan as VideoDiT(cfg) in float32 train mode, with LoRA layers (only they train) when
    lora.rank > 0."""
    weights = VideoDiT.from_pretrained(folder).state_dict()
    model = wan_diffusers.build_from_state_dict(cfg, weights).train()
    if lora.rank:
        add_lora(model, lora)
    return model


class WanPromptEncoder:
    """UMT5 encoding prompts as Wan does (`videodit.wan_text.encode_prompts`: real-token states), with
    TextEncoder's `encode(prompts) -> (states, pooled)` signature (pooled is None)."""

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.dim, self.path = encoder, encoder.dim, encoder.path

    def encode(self, prompts: list[str]) -> tuple[list[torch.Tensor], None]:
        return encode_prompts(self.encoder, list(prompts), TEXT_LEN), None


def text_encoder_for(path: str | Path, device=None, dtype=None) -> WanPromptEncoder:
    """A WanPipeline folder (its text_encoder/ and tokenizer/) or a UMT5 folder (its tokenizer beside it in
    ../tokenizer when it has none of its own) -> WanPromptEncoder."""
    folder = Path(path)
    if is_pipeline_folder(folder):
        folder = folder / "text_encoder"
    tokenizer = None
    if not any((folder / n).is_file() for n in ("tokenizer_config.json", "tokenizer.json", "spiece.model")):
        if (folder.parent / "tokenizer").is_dir():
            tokenizer = folder.parent / "tokenizer"
    return WanPromptEncoder(TextEncoder(folder, max_length=TEXT_LEN, device=device, dtype=dtype,
                                        tokenizer_path=tokenizer))


def empty_text(encoder: WanPromptEncoder) -> torch.Tensor:
    """The padded encoding of "" (512, D) float32: the text of a dropped sample."""
    states, _ = encoder.encode([""])
    return pad_text(states[0].float(), TEXT_LEN)


def pad_texts(texts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Real-token states [(L_i, D)] -> [(512, D)]."""
    return [pad_text(t, TEXT_LEN) for t in texts]


def _model_with_weights(cfg: DiTConfig, weights: dict[str, torch.Tensor], lora: LoRAConfig) -> VideoDiT:
    with torch.device("meta"):
        model = VideoDiT(cfg)
    if lora.rank:
        add_lora(model, lora)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True, assign=True)
    return model.eval()


def merged_model(cfg: DiTConfig, weights: dict[str, torch.Tensor], lora: LoRAConfig) -> VideoDiT:
    """A plain VideoDiT from the trained weights (LoRA merged into the base weights)."""
    from videodit.lora import merge_lora

    model = _model_with_weights(cfg, weights, lora)
    return merge_lora(model).eval() if lora.rank else model


def export(weights: dict[str, torch.Tensor], cfg: DiTConfig, lora: LoRAConfig, folder: Path,
           base: str | Path) -> None:
    """Write the usable result of a Wan fine-tune to `folder` (see the module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora.rank:
        save_lora(_model_with_weights(cfg, weights, lora), folder / LORA_FILE)
        return
    wan_diffusers.save_diffusers_transformer(merged_model(cfg, weights, lora), folder / "transformer")
    base = Path(base)
    if not is_pipeline_folder(base):
        return
    for part in PIPELINE_PARTS:
        link = folder / part
        if not link.exists():
            tmp = folder / f".{part}.tmp-{os.getpid()}"
            os.symlink((base / part).resolve(), tmp, target_is_directory=True)
            os.replace(tmp, link)
    tmp = folder / f".model_index.json.tmp-{os.getpid()}"
    tmp.write_text((base / "model_index.json").read_text())
    os.replace(tmp, folder / "model_index.json")


def scheduler_config(base: str | Path) -> dict:
    """The base WanPipeline folder's scheduler config, else Wan2.1's (DEFAULT_SCHEDULER)."""
    path = Path(base) / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else dict(DEFAULT_SCHEDULER)
