"""The training loop shared by `train_video.py` and `train_vae.py`: optimizer and lr schedule, DeepSpeed
engine, EMA, NaN skipping, logging, checkpoints, resume and `init_from`.

A training script builds its model, data and loss as a `Task` and hands it to `train`. One optimizer step
takes `deepspeed.grad_accum` micro-steps per rank; each micro-step's randomness comes from
`step_generator(seed, data rank, step, micro)`, a function of its position only (ranks sharing a row draw
alike), so a resumed run continues exactly as an unstopped one would.

Checkpoints live under `<output_dir>/checkpoints/`:

    step00001000/         DeepSpeed's state (model, optimizer, lr schedule; one file per rank for ZeRO)
                          extra_rank00000.pt   the task's state on that rank (e.g. data position) and RNG
                          ema_state.pt         the EMA shadow (when train.ema_decay > 0)
                          <export name>/       the usable model folder (EMA weights when there is an EMA)
    latest                names the newest complete folder
    exported              names the checkpoint `<output_dir>/<export name>` was refreshed from

A save is written under a temporary name, renamed to its `stepNNNNNNNN` name once every rank has
finished, and only then made current by replacing `latest` (os.replace): a run killed mid-save says so and
resumes from the previous checkpoint. DeepSpeed's own `latest` file is never written or read.
`<output_dir>/<export name>` is refreshed at every save (atomically, through `vae3d.atomic`), and on resume
when a kill came between a checkpoint's commit and that refresh.

Resume reads JSON, safetensors and `torch.load(weights_only=True)` files of our own, but DeepSpeed's
`load_checkpoint` unpickles its files: resume only from a folder you trust.

A new run into an `output_dir` that already holds a run (its config.json, metrics.jsonl or checkpoints/)
is refused, naming the folder, unless it resumes that run from a complete checkpoint or `train.overwrite`
is set (which removes the old run's checkpoints, metrics, tensorboard logs and exported model first).
After a resume, metrics.jsonl keeps the records up to the resumed step, so each step appears once.

`train.max_nonfinite` consecutive micro-steps with a non-finite loss stop the run with an error naming the
step and the samples (`Task.samples`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vae3d.atomic import replace_folder, write_text
from videodit.distributed import (
    DeepSpeedConfig,
    any_rank,
    barrier,
    deepspeed_config,
    device_for,
    gathered,
    init_distributed,
)
from videodit.ema import EMA
from videodit.sequence_parallel import scaled_for_mean_reducer

log = logging.getLogger("videodit.trainer")

CHECKPOINTS = "checkpoints"
LATEST = "latest"
EXPORTED = "exported"  # names the checkpoint <output_dir>/<export name> was last refreshed from


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    max_steps: int = 1000  # optimizer steps; the lr schedule ends here
    stop_step: int = -1  # end this run after this step (with a checkpoint); -1 = max_steps
    seed: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100  # linear warm-up from 0
    # Cosine decay of the lr from decay_start to max_steps, down to lr * min_lr_ratio (-1: constant lr).
    # The lr is a function of the config and the step, so a resumed run takes the config's lr and schedule.
    decay_start: int = -1
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.999  # exponential moving average of the weights; 0 = none
    log_every: int = 10
    save_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    resume: bool = True  # continue from <output_dir>/checkpoints/latest if present
    overwrite: bool = False  # a new run may replace an earlier run's files in output_dir
    max_nonfinite: int = 20  # consecutive non-finite micro-step losses that stop the run (skipped until then)
    # Start a NEW run from the weights of a saved model folder instead of random init (each trainer says
    # which differences it allows). Ignored when resuming: the checkpoint wins.
    init_from: str = ""

    def __post_init__(self):
        if self.max_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"train.max_steps must be >= 1 and train.warmup_steps >= 0, "
                             f"got {self.max_steps}, {self.warmup_steps}")
        if not (self.stop_step == -1 or 1 <= self.stop_step <= self.max_steps):
            raise ValueError(f"train.stop_step must be -1 or in [1, max_steps = {self.max_steps}], "
                             f"got {self.stop_step}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"train.lr must be > 0 and train.weight_decay >= 0, got {self.lr}, "
                             f"{self.weight_decay}")
        if self.log_every < 1 or self.save_every < 0 or self.keep_checkpoints < 1:
            raise ValueError(f"train.log_every >= 1, save_every >= 0 and keep_checkpoints >= 1 required, got "
                             f"{self.log_every}, {self.save_every}, {self.keep_checkpoints}")
        if self.decay_start >= 0 and self.decay_start >= self.max_steps:
            raise ValueError(f"train.decay_start ({self.decay_start}) must be < max_steps ({self.max_steps}) "
                             f"or -1 (no decay)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_nonfinite < 1:
            raise ValueError(f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")

    @property
    def last_step(self) -> int:
        """The step this run ends at."""
        return self.stop_step if self.stop_step >= 0 else self.max_steps


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up, constant, then (if
    decay_start >= 0) a cosine from 1 at decay_start to min_lr_ratio at max_steps."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if 0 <= cfg.decay_start <= step:
        progress = min(1.0, (step - cfg.decay_start) / max(1, cfg.max_steps - cfg.decay_start))
        factor *= cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def step_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """CPU RNG of one micro-step: a function of its position only, so resume is exact."""
    return torch.Generator().manual_seed(hash((seed, rank, step, micro)) & 0x7FFF_FFFF_FFFF)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


def load_matching(model: nn.Module, source: dict[str, torch.Tensor], keep_fresh: set[str], what: str) -> None:
    """Copy `source` weights into `model`: every key must exist in both with the same shape, except the
    model's keys in `keep_fresh`, which keep their current (fresh) values. ValueError naming `what` and the
    first mismatched keys otherwise."""
    target = model.state_dict()
    bad = [k for k in target
           if k not in keep_fresh and (k not in source or source[k].shape != target[k].shape)]
    bad += [k for k in source if k not in target]
    if bad:
        raise ValueError(f"train.init_from {what!r} does not fit the model: mismatched, missing or extra "
                         f"{bad[:5]}{' ...' if len(bad) > 5 else ''}")
    model.load_state_dict({k: v.float() for k, v in source.items() if k not in keep_fresh}, strict=False)


class Task(Protocol):
    """What a training script gives `train`: its loss, state and export. All methods run on every rank
    unless said otherwise."""

    def init_from(self, model: nn.Module, folder: str) -> None:
        """Load `train.init_from`'s weights into the fresh model (a new run, not a resumed one)."""

    def loss(self, model: Callable, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """One micro-step: (scalar loss to minimise, {name: float} to log). `model` runs the engine's
        forward; `step` is the 0-based index of the optimizer step in progress; all randomness from
        `generator`."""

    def after_step(self, step: int, weights: Callable[[], dict]) -> None:
        """After optimizer step `step` (1-based); `weights()` (collective) gives the exported weights."""

    def log_fields(self, seconds: float) -> dict:
        """Extra fields of a log record (collective), `seconds` since the previous record."""

    def state_dict(self) -> dict:
        """This rank's state to checkpoint (e.g. the data position)."""

    def load_state_dict(self, state: dict) -> None: ...

    def export(self, weights: dict[str, torch.Tensor], folder: Path) -> None:
        """Rank 0: write the usable model folder (e.g. `save_dit`) from a state dict."""

    def samples(self) -> list[str]:
        """What the last micro-step trained on (file paths or ids), for error messages."""


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """A trainer's command line: --config YAML and repeatable --set key.path=value overrides."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file (only what differs from the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="typed override, e.g. train.max_steps=10 (repeatable)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    return p.parse_args(argv)


@dataclass
class Session:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    out: Path
    # Ranks that share one row (sequence parallelism: videodit.sequence_parallel.parallel_groups puts
    # ranks [k*sequence, (k+1)*sequence) together). They draw the same randomness, and each
    # back-propagates the loss times `sequence`, so DeepSpeed's mean over all ranks sums each row's parts.
    sequence: int = 1

    @property
    def data_rank(self) -> int:
        """This rank's row among the data-parallel rows."""
        return self.rank // self.sequence


def start(cfg: TrainConfig, ds: DeepSpeedConfig) -> Session:
    """Join (or make) the process group, log to `<output_dir>/train.log` (rank 0), seed every RNG: the
    model is initialised identically on every rank; python's and numpy's streams differ per rank."""
    rank, local_rank, world = init_distributed(ds.cpu_shm_comm)
    out = Path(cfg.output_dir)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / "train.log"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)
    return Session(rank, local_rank, world, device_for(local_rank), out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint folder `<output_dir>/checkpoints/latest` names, or None."""
    root = Path(output_dir) / CHECKPOINTS
    if not (root / LATEST).is_file():
        return None
    folder = root / (root / LATEST).read_text().strip()
    if not folder.is_dir():
        raise ValueError(f"{str(root / LATEST)!r} names {folder.name!r}, which is missing: restore it, or "
                         f"start again with train.resume=false train.overwrite=true")
    return folder


def interrupted_saves(output_dir: str | Path) -> list[str]:
    """Names of checkpoints whose save was cut short (left as `.stepNNNNNNNN.tmp`)."""
    root = Path(output_dir) / CHECKPOINTS
    return sorted(p.name for p in root.glob(".step*.tmp")) if root.is_dir() else []


RUN_FILES = ("config.json", "metrics.jsonl", CHECKPOINTS, "tb")  # what makes a folder hold a run


def claim_output_dir(cfg: TrainConfig, session: Session, export_name: str) -> Path | None:
    """The checkpoint to resume from, or None for a new run; a new run into a folder that holds another run
    is refused (ValueError naming the folder) unless `train.overwrite`, which removes that run's files
    (rank 0). Collective."""
    out = session.out
    folder = latest_checkpoint(out) if cfg.resume else None
    partial = interrupted_saves(out)
    if folder is not None:
        if partial:
            log.warning("found an interrupted save (%s); resuming from the last complete checkpoint %s",
                        ", ".join(partial), folder.name)
        return folder
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not cfg.overwrite:
        why = "train.resume is false" if cfg.resume is False else (
            f"it has no complete checkpoint to resume (interrupted: {', '.join(partial)})" if partial
            else "it has no checkpoint to resume")
        raise ValueError(f"train.output_dir {str(out)!r} already holds a run ({', '.join(held)}) and {why}; "
                         f"use another output_dir, or set train.overwrite=true to replace that run")
    if held and session.rank == 0:
        log.warning("train.overwrite: removing the earlier run's %s in %s", ", ".join(held), out)
        for name in (*RUN_FILES, export_name):
            path = out / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        for version in out.glob(f".{export_name}.*"):
            shutil.rmtree(version, ignore_errors=True)
    barrier()
    return None


def refresh_export(folder: Path, export_name: str) -> None:
    """Make `<output_dir>/<export name>` the resumed checkpoint's export, unless it already is (a run killed
    after a checkpoint's commit and before its export left an older one there)."""
    root, out = folder.parent, folder.parent.parent
    exported = root / EXPORTED
    if exported.is_file() and exported.read_text().strip() == folder.name:
        return
    with replace_folder(out / export_name) as tmp:
        shutil.copytree(folder / export_name, tmp, dirs_exist_ok=True)
    write_text(exported, folder.name)
    log.info("refreshed %s from %s", out / export_name, folder.name)


def keep_metrics_until(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl with only its records of steps <= `step` (a resumed run logs the rest again);
    a line cut short by a kill is dropped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


class NonFiniteLoss(RuntimeError):
    """Too many consecutive non-finite losses: the run stops."""


@dataclass
class _Run:
    task: Task
    engine: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    cfg: TrainConfig
    ds: DeepSpeedConfig
    session: Session
    export_name: str

    def weights(self) -> dict[str, torch.Tensor]:
        """The exported weights (collective): the EMA's where there is one, else the live model's."""
        module = self.engine.module
        with gathered(module, self.ds.zero_stage):
            state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        if self.ema is not None:
            state.update({k: v.cpu().clone() for k, v in self.ema.shadow.items()})
        return state

    def save(self, step: int) -> Path:
        """Write checkpoint `step`; it becomes current when `latest` is replaced (collective)."""
        root = self.session.out / CHECKPOINTS
        rank, tag = self.session.rank, f"step{step:08d}"
        tmp = root / f".{tag}.tmp"
        if rank == 0:  # what killed saves and deletions left
            for leftover in [*root.glob(".step*.tmp"), *root.glob(".step*.trash")]:
                shutil.rmtree(leftover)
        barrier()
        self.engine.save_checkpoint(str(root), tag=tmp.name, client_state={"step": step}, save_latest=False)
        torch.save({**self.task.state_dict(), "rng": rng_state()}, tmp / f"extra_rank{rank:05d}.pt")
        weights = self.weights()
        if rank == 0:
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / "ema_state.pt")
            self.task.export(weights, tmp / self.export_name)
        barrier()
        if rank == 0:
            if (root / tag).exists():  # complete but never made current: a save killed before `latest`
                _remove(root / tag)
            os.replace(tmp, root / tag)
            write_text(root / LATEST, tag)  # the commit point
            self.task.export(weights, self.session.out / self.export_name)
            write_text(root / EXPORTED, tag)
            tags = sorted(p.name for p in root.glob("step*") if p.is_dir())
            for old in tags[: -self.cfg.keep_checkpoints]:
                if old != tag:
                    _remove(root / old)
            log.info("saved checkpoint %s", root / tag)
        barrier()
        return root / tag

    def resume(self, folder: Path) -> int:
        """Restore model, optimizer, schedule, EMA, task state and RNG from `folder` -> its step."""
        _, client = self.engine.load_checkpoint(str(folder.parent), tag=folder.name)
        extra = _load_own(folder / f"extra_rank{self.session.rank:05d}.pt")
        set_rng_state(extra.pop("rng"))
        self.task.load_state_dict(extra)
        if self.ema is not None:
            self.ema.load_state_dict(_load_own(folder / "ema_state.pt"))
        step = int(client["step"])
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.scheduler.base_lrs)  # the config's lr wins
        for group in self.scheduler.optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.scheduler.last_epoch, self.cfg)
        log.info("resumed from %s at step %d (model, optimizer, EMA, data position, RNG restored)", folder,
                 step)
        return step


def _load_own(path: Path) -> dict:
    """A file the trainer wrote with torch.save, read with weights_only=True: tensors and plain containers
    only, so a crafted file cannot run code. ValueError naming it otherwise."""
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a checkpoint file this trainer wrote (it is refused without "
                         f"unpickling anything beyond tensors: {str(e).splitlines()[0]})") from None


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder: renamed out of the `stepNNNNNNNN` names first, so a kill mid-delete
    never leaves a half-deleted folder under a checkpoint's name."""
    trash = folder.with_name(f".{folder.name}.trash")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(folder, trash)
    shutil.rmtree(trash)


def _reduce_logs(sums: dict[str, float], count: int, device) -> dict[str, float]:
    """Micro-step sums -> means over micro-steps and ranks (one all-reduce)."""
    import torch.distributed as dist

    keys = sorted(sums)
    values = torch.tensor([sums[k] / max(1, count) for k in keys], dtype=torch.float64, device=device)
    if dist.is_initialized() and keys:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(keys, values.tolist()))


def _diverged(task: Task, step: int, count: int) -> NonFiniteLoss:
    samples = task.samples() if hasattr(task, "samples") else []
    shown = ", ".join(samples[:8]) + (f" and {len(samples) - 8} more" if len(samples) > 8 else "")
    message = (f"{count} consecutive micro-steps had a non-finite loss, the last in step {step + 1} on "
               f"samples [{shown}]; stopping (train.max_nonfinite = {count}). Check those samples (e.g. NaN "
               f"in cached latents) or lower train.lr; the last checkpoint is intact")
    log.error(message)
    return NonFiniteLoss(message)


@dataclass
class Result:
    records: list[dict]  # the logged records
    weights: dict[str, torch.Tensor]  # the exported weights at the end (EMA's where there is one)
    step: int


def train(task: Task, model: nn.Module, cfg: TrainConfig, ds: DeepSpeedConfig, session: Session,
          run_config: dict, export_name: str) -> Result:
    """Train `model` on `task` from step 0, or from `<output_dir>/checkpoints/latest` -> Result.

    Builds AdamW over the parameters that require grad, the `lr_factor` schedule, the EMA and the
    DeepSpeed engine; writes `run_config` to `<output_dir>/config.json`, records to `metrics.jsonl` and
    tensorboard (`tb/`), and a checkpoint every `save_every` steps and at the end. A micro-step whose loss
    is not finite on any rank is skipped by all of them (no update) and counted.
    """
    import deepspeed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    rank, out = session.rank, session.out
    folder = claim_output_dir(cfg, session, export_name)
    if cfg.init_from and folder is None:
        task.init_from(model, cfg.init_from)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(ds, session.world))
    run = _Run(task, engine, scheduler, ema, cfg, ds, session, export_name)
    step = run.resume(folder) if folder is not None else 0
    if rank == 0:
        if folder is not None:
            refresh_export(folder, export_name)
        keep_metrics_until(out / "metrics.jsonl", step)
        write_text(out / "config.json", json.dumps(run_config, indent=2))
        log.info("world size %d, ZeRO stage %d, %s, %.2fM parameters (%.2fM trained)", session.world,
                 ds.zero_stage, ds.precision, sum(p.numel() for p in model.parameters()) / 1e6,
                 sum(p.numel() for p in params) / 1e6)
    writer = SummaryWriter(str(out / "tb"), purge_step=step + 1 if step else None) if rank == 0 else None
    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    last = cfg.last_step
    bar = tqdm(total=last, initial=step, disable=rank != 0, desc="train")
    records, nan_skips, nonfinite_run, t0 = [], 0, 0, time.time()
    while step < last:
        sums: dict[str, float] = {}
        done = attempt = 0
        while done < ds.grad_accum:  # one optimizer step = grad_accum micro-steps per rank
            gen = step_generator(cfg.seed, session.data_rank, step, attempt)
            attempt += 1
            loss, logs = task.loss(engine, step, gen)
            if any_rank(not bool(torch.isfinite(loss)), session.device):  # all ranks skip together
                nan_skips += 1
                nonfinite_run += 1
                log.warning("non-finite loss at step %d (rank-local %s): micro-step skipped, no update",
                            step, loss.item())
                if nonfinite_run >= cfg.max_nonfinite:
                    raise _diverged(task, step, nonfinite_run)
                continue
            nonfinite_run = 0
            engine.backward(scaled_for_mean_reducer(loss, session.sequence))
            engine.step()
            for k, v in {"loss": loss.item(), **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            done += 1
        step += 1
        if ema is not None:
            with gathered(engine.module, ds.zero_stage):
                ema.update(engine.module)
        task.after_step(step, run.weights)
        bar.update(1)
        if step % cfg.log_every == 0 or step == last:
            now = time.time()
            rec = {"step": step, **_reduce_logs(sums, done, session.device),
                   "lr": float(optimizer.param_groups[0]["lr"]), "nan_skips": nan_skips,
                   "sec_per_step": (now - t0) / cfg.log_every, **task.log_fields(now - t0)}
            t0 = now
            records.append(rec)
            if rank == 0:
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                log.info("step %d %s", step, " ".join(f"{k} {v:.4g}" for k, v in rec.items()
                                                       if k != "step" and isinstance(v, (int, float))))
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                for k, v in rec.items():
                    if k != "step" and isinstance(v, (int, float)):
                        writer.add_scalar(f"train/{k}", v, step)
        if (cfg.save_every and step % cfg.save_every == 0) or step == last:
            run.save(step)
    bar.close()
    weights = run.weights()
    if rank == 0:
        writer.close()
        metrics.close()
        log.info("done at step %d; non-finite losses skipped %d; weights in %s", step, nan_skips,
                 out / export_name)
    return Result(records, weights, step)
