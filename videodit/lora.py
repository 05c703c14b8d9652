"""LoRA for VideoDiT through `peft`: inject, save in the diffusers/PEFT format, merge, apply LoRA files.

Targets are named by VideoDiT's block linears (`LoRAConfig.target_modules`, see
videodit.wan_diffusers.BLOCK_LINEARS). Where VideoDiT stacks several diffusers projections into one linear
(`attn.qkv` = to_q, to_k, to_v; `cross.kv` = to_k, to_v), one rank-r LoRA on the stack is exactly one rank-r
LoRA per projection that shares the down matrix A: delta_W = B A, and the rows of B split per projection.

Saved files are the format diffusers' `WanPipeline.load_lora_weights` (and other tools reading PEFT LoRAs)
load: `transformer.blocks.{i}.attn1.to_q.lora_A.weight` `(r, in)` and `...lora_B.weight` `(out, r)`, with
the scale alpha / r folded into lora_B so that readers that assume alpha = r get the same weights.

`apply_lora_files` merges LoRA files into a model's weights at a scale (generation time). It reads that
diffusers/PEFT format and the original Wan key layout (`diffusion_model.blocks.{i}.self_attn.q.lora_down`
/ `lora_up` / `alpha`, as trainers for the original code write it). A LoRA whose names or shapes do not fit
the model (made for another base model) is a one-line ValueError.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from videodit import wan_original
from videodit.lora_spec import parse_lora_spec  # noqa: F401  (re-exported)
from videodit.wan_diffusers import BLOCK_LINEARS, TOP_LINEARS

DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "cross.q", "cross.kv", "cross.proj")
ADAPTER = "default"


@dataclass
class LoRAConfig:
    rank: int = 16  # r: the LoRA matrices' inner width; 0 = no LoRA (a run's full fine-tune)
    alpha: float = 16.0  # the update is scaled by alpha / rank
    # VideoDiT block linears to adapt; any of videodit.wan_diffusers.BLOCK_LINEARS
    target_modules: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora rank must be >= 0 (0 = no LoRA), got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
        bad = [t for t in self.target_modules if t not in BLOCK_LINEARS]
        if bad or not self.target_modules:
            raise ValueError(f"lora target_modules {list(self.target_modules)}: unknown {bad}; "
                             f"choose from {list(BLOCK_LINEARS)}")


def add_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Inject LoRA layers (peft) into `model`'s blocks in place; freeze everything else. Returns `model`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    if cfg.rank < 1:
        raise ValueError(f"add_lora needs lora rank >= 1, got {cfg.rank}")

    names = [f"blocks.{i}.{t}" for i in range(len(model.blocks)) for t in cfg.target_modules]
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=names, lora_dropout=0.0)
    inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Our module name -> peft LoRA layer."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and ADAPTER in m.lora_A}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The injected LoRA weights in diffusers/PEFT names, alpha / r folded into lora_B (float32, CPU)."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers (add_lora first)")
    out = {}
    for name, layer in layers.items():
        _, index, ours = name.split(".", 2)  # "blocks", i, e.g. "attn.qkv"
        a = layer.lora_A[ADAPTER].weight.detach().float().cpu()  # (r, in)
        b = layer.lora_B[ADAPTER].weight.detach().float().cpu() * layer.scaling[ADAPTER]  # (out, r)
        theirs = BLOCK_LINEARS[ours]
        for part, b_part in zip(theirs, b.chunk(len(theirs))):
            key = f"transformer.blocks.{index}.{part}"
            out[f"{key}.lora_A.weight"] = a.clone()
            out[f"{key}.lora_B.weight"] = b_part.contiguous()
    return out


def save_lora(model: nn.Module, path: str | Path) -> Path:
    """Write the model's LoRA weights as one diffusers/PEFT safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_file(lora_state_dict(model), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base linear and remove the peft wrappers. Returns `model`."""
    for name, layer in _lora_layers(model).items():
        layer.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _split_key(key: str) -> tuple[str, str]:
    """A LoRA tensor key -> (diffusers module name, one of "A", "B", "alpha")."""
    for prefix in ("transformer.", "model.diffusion_model.", "diffusion_model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    suffixes = {".lora_A.weight": "A", ".lora_down.weight": "A", ".lora_B.weight": "B",
                ".lora_up.weight": "B", ".alpha": "alpha"}
    suffix = next((s for s in suffixes if key.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"unsupported LoRA key {key!r}: expected lora_A/lora_B, lora_down/lora_up or alpha")
    module, kind = key[: -len(suffix)], suffixes[suffix]
    original = (".self_attn.", ".cross_attn.", "text_embedding.", "time_embedding.", "time_projection.")
    if any(m in module for m in original) or module.endswith((".ffn.0", ".ffn.2")):
        module = wan_original.rename_key(module + ".weight")[: -len(".weight")]  # original Wan names
    return module, kind


def _target(module: str, depth: int) -> tuple[str, int, int]:
    """A diffusers module name -> (our linear's name, row part index, number of parts)."""
    parts = module.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        theirs = ".".join(parts[2:])
        for ours, stack in BLOCK_LINEARS.items():
            if theirs in stack:
                if int(parts[1]) >= depth:
                    raise ValueError(f"LoRA targets block {parts[1]} but the model has blocks "
                                     f"0..{depth - 1}; was it made for another base model?")
                return f"blocks.{parts[1]}.{ours}", stack.index(theirs), len(stack)
    for ours, theirs in TOP_LINEARS.items():
        if module == theirs:
            return ours, 0, 1
    raise ValueError(f"LoRA targets {module!r}, which this model has no linear for; was it made for another "
                     "base model (or an image-to-video Wan)?")


@torch.no_grad()
def apply_lora_files(model: nn.Module, specs: list[tuple[str | Path, float]]) -> nn.Module:
    """Merge each (LoRA file, scale) into `model`'s weights: W += scale * (alpha / r) * B A. Returns `model`.

    A LoRA that does not fit (unknown module, block out of range, mismatched shapes) raises a one-line
    ValueError naming the file, and leaves the model unchanged."""
    if _lora_layers(model):
        raise ValueError("merge the model's own LoRA layers (merge_lora) before applying LoRA files")
    depth = len(model.blocks)
    for path, scale in specs:
        state = load_file(str(path))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        try:
            for key, value in state.items():
                module, kind = _split_key(key)
                pairs.setdefault(module, {})[kind] = value
            deltas = []
            for module, pair in sorted(pairs.items()):
                if "A" not in pair or "B" not in pair:
                    raise ValueError(f"LoRA module {module!r} lacks its {'B' if 'A' in pair else 'A'} matrix")
                a, b = pair["A"].float(), pair["B"].float()  # (r, in), (out, r)
                rank = a.shape[0]
                factor = float(pair["alpha"]) / rank if "alpha" in pair else 1.0
                ours, index, count = _target(module, depth)
                weight = model.get_submodule(ours).weight
                rows = weight.shape[0] // count
                if a.dim() != 2 or b.shape != (rows, rank) or a.shape[1] != weight.shape[1]:
                    raise ValueError(f"LoRA {module!r} has shapes A {tuple(a.shape)}, B {tuple(b.shape)} "
                                     f"but the model's {ours} maps {weight.shape[1]} -> {rows} per part; "
                                     "was it made for another base model?")
                deltas.append((weight, slice(index * rows, (index + 1) * rows), (b @ a) * factor * scale))
        except ValueError as e:
            raise ValueError(f"LoRA file {str(path)!r} does not fit this model: {e}") from None
        for weight, rows, delta in deltas:
            weight[rows] += delta.to(device=weight.device, dtype=weight.dtype)
    return model
