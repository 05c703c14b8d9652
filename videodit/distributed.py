"""Rank logic and DeepSpeed glue: process group, DeepSpeed config from ours, gathers, barriers.

Model files never import this; entry points (train_video.py, data/precache.py) do.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed settings we expose; `deepspeed_config()` turns them into DeepSpeed's JSON dict."""

    zero_stage: int = 2  # 0 (DDP-like), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_accum: int = 1  # micro-steps (rows) per optimizer step
    grad_clip: float = 1.0  # global gradient-norm clip; 0 = off
    overlap_comm: bool = False
    cpu_shm_comm: bool = False  # CPU only: build DeepSpeed's shared-memory all-reduce op (slow JIT compile)

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.grad_accum < 1:
            raise ValueError(f"deepspeed.grad_accum must be >= 1, got {self.grad_accum}")
        if self.grad_clip < 0:
            raise ValueError(f"deepspeed.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


def deepspeed_config(cfg: DeepSpeedConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed's config dict. One micro-batch = one packed row, so micro batch size is 1."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(overlap_comm=cfg.overlap_comm, contiguous_gradients=True)
    if cfg.zero_stage == 3:
        # keep tiny parameters sharded too, so ZeRO-3 really partitions small test models
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=False)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # our client-side torch AdamW
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(cpu_shm_comm: bool = False) -> tuple[int, int, int]:
    """Join (or create) the process group -> (rank, local_rank, world_size).

    Under the `deepspeed` launcher RANK/WORLD_SIZE/MASTER_* come from the environment; a plain
    `python train_video.py` becomes a 1-process group on a free local port. Backend: nccl on CUDA,
    gloo on CPU (DeepSpeed's accelerator picks it). On CPU, DeepSpeed would JIT-compile its shared-memory
    all-reduce op on first use (minutes on a small machine); it is only built if `cpu_shm_comm`.
    """
    import deepspeed
    import deepspeed.ops

    if not torch.cuda.is_available() and not cpu_shm_comm:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    if "RANK" not in os.environ:  # plain python: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return dist.get_rank(), local_rank, dist.get_world_size()


def env_rank_world() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment, without joining a process group."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just [obj] without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True if `flag` is true on any rank (all ranks must call it)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, device: torch.device | None = None) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def sum_over_ranks(value: int, device: torch.device | None = None) -> int:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return int(t.item())


def gathered(module: torch.nn.Module, zero_stage: int):
    """Context in which a ZeRO-3 module's parameters are whole on every rank (no-op below stage 3).

    All ranks must enter it together.
    """
    if zero_stage < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
