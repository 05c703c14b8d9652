"""Exponential moving average of model weights (float32 shadow copy).

    shadow <- decay_n * shadow + (1 - decay_n) * param,   decay_n = min(decay, (1 + n) / (10 + n))

The warm-up form of decay_n (n = number of updates so far) lets the average follow the fast early
changes instead of remembering the random init for thousands of steps. State is explicit: the shadow
tensors and the update count live in this object and round-trip through `state_dict()`.

Sharded models (ZeRO-3) hold only a slice of each parameter per rank; the caller gathers the full
parameters (`videodit.distributed.gathered`) around `update` and `copy_to`.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        # frozen parameters (e.g. a LoRA run's base weights) never change, so their average is themselves
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()
                       if p.requires_grad}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards the model's current parameters."""
        d = self.current_decay()
        for name, p in model.named_parameters():
            if name not in self.shadow:
                if not p.requires_grad:
                    continue
                raise ValueError(f"EMA has no shadow for parameter {name!r}")
            self.shadow[name].lerp_(p.detach().float().to(self.shadow[name].device), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (same parameter names)."""
        for name, p in model.named_parameters():
            if name not in self.shadow:
                continue
            p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        if missing:
            raise ValueError(f"EMA state is missing parameters {missing[:5]}")
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]
        self.shadow = {k: state["shadow"][k].float().clone() for k in self.shadow}
