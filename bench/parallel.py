"""Sequence parallelism and rank balance on CPU ranks (gloo): memory per rank, all-to-all share, stragglers.

    deepspeed --num_accelerators 2 --module bench.parallel [--hidden 256 --depth 4 --heads 8 ...]
    python -m bench.parallel [...]            (no launcher: spawns 2 local gloo ranks itself)

Every rank runs one torch thread. Three measurements, in one run:

1. Memory of one long sample (`--long-tokens` tokens, one clip) per rank, SP=2 over SP=1: peak resident
   memory of a training step (forward + backward) over the resident memory just before it. Parameter
   gradients are allocated by a warm-up step before, so the figure is the step's own memory: activations,
   attention and all-to-all buffers. Between runs freed memory goes back to the OS (glibc: large blocks
   are mmap'd, the heap is trimmed) and the kernel's peak counter is reset (/proc/self/clear_refs), so
   each run's peak is its own. At SP=1 every rank runs the whole sample alone. `activation_share` is the
   bytes autograd keeps for the backward (parameters excluded) over the SP=1 peak: the sample is sized so
   that activations are at least half the peak, where SP can split them.
2. All-to-all share: seconds inside the all-to-alls (forward and backward; on gloo that includes waiting
   for the other rank) over the SP=2 step time, on the same long sample.
3. Rank balance on a mixed set (`--samples` clips from bench.packing's web-video-like distribution at
   `--scale`), data parallel over all ranks, no SP. Each step every rank trains its row; the time is the
   compute before the gradient all-reduce, measured as the thread's CPU time (one torch thread does all
   of a rank's forward and backward, so this is the rank's compute even when the machine is shared; wall
   time is reported too). straggler_ratio = sum over steps of the slowest rank's time over the mean
   rank's time (1.0 = balanced). Two plans of the same samples and row budget (`--row-tokens`):
   - cost: `videodit.balanced_packing.plan_balanced_steps` with the VideoDiT cost model;
   - tokens (baseline): what the loader does today, each rank's share of the samples
     (order[rank::world]) first-fit-decreasing into rows of the token budget (`plan_rows`), the ranks'
     k-th rows trained together.

JSON lines; the last holds peak_mem_ratio_sp2_vs_sp1, alltoall_share, straggler_ratio_cost and
straggler_ratio_tokens.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import random
import re
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.packing import draw_shapes
from videodit.balanced_packing import plan_balanced_steps, straggler_ratio
from videodit.cost_model import cost_model
from videodit.flow import per_sample_mean
from videodit.model import DiTConfig, VideoDiT
from videodit.packing import num_tokens, pack, plan_rows
from videodit.sequence_parallel import CommTimer, forward_shard, parallel_groups, sample_means, sum_gradients

PATCH = (1, 2, 2)
CHANNELS = 16
TEXT_DIM = 384


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--long-tokens", type=int, default=4096,
                   help="tokens of the long sample (a multiple of 4)")
    p.add_argument("--samples", type=int, default=48, help="clips of the mixed set")
    p.add_argument("--scale", type=float, default=1.0, help="size scale of the mixed set (bench.packing)")
    p.add_argument("--row-tokens", type=int, default=4096, help="token budget of one row (one rank)")
    p.add_argument("--ranks", type=int, default=2, help="ranks to spawn without a launcher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    args = p.parse_args(argv)
    if args.long_tokens < 4 or args.long_tokens % 4:
        p.error(f"--long-tokens must be a positive multiple of 4, got {args.long_tokens}")
    return args


def emit(rank: int, **kw) -> None:
    if rank == 0:
        print(json.dumps(kw), flush=True)


# ------------------------------------------------------------------ resident memory (Linux)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_freed_memory() -> None:
    """Give freed memory back to the OS, so the next run's peak starts from what is really in use."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_over_baseline(step) -> tuple[int, object]:
    """Run `step()` -> (peak resident bytes over the resident bytes just before it, its result)."""
    return_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the kernel's peak resident set (VmHWM) to the current one
    base = _status_kib("VmRSS")
    result = step()
    peak = _status_kib("VmHWM")
    return (peak - base) * 1024, result


def mmap_large_blocks() -> None:
    """glibc: serve blocks over 64 KiB by mmap (unmapped on free) at a fixed threshold, so freed tensors
    leave the resident set at once instead of staying in the heap."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


# ------------------------------------------------------------------ steps


def build_model(args) -> VideoDiT:
    torch.manual_seed(args.seed)  # the same weights on every rank
    cfg = DiTConfig(in_channels=CHANNELS, text_dim=TEXT_DIM, hidden_size=args.hidden, depth=args.depth,
                    num_heads=args.heads, attention="sdpa")
    model = VideoDiT(cfg)
    with torch.no_grad():  # off the zero init, so every block does real work
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def make_row(shapes, text_lengths, seed: int):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(CHANNELS, *s, generator=g) for s in shapes]
    texts = [torch.randn(n, TEXT_DIM, generator=g) for n in text_lengths]
    packed = pack(latents, texts, PATCH)
    return packed, torch.rand(len(shapes), generator=g), torch.randn(packed.tokens.shape, generator=g)


def train_step(model, packed, t, target, sequence=None, timer: CommTimer | None = None) -> None:
    """Forward + backward of a per-sample MSE; `sequence` = (rank, size, group) runs it sequence-parallel."""
    if sequence is None:
        err = (model.forward_packed(packed, t) - target).pow(2).mean(dim=1)  # (N,)
        loss = per_sample_mean(err, packed.sample_id, packed.num_samples).mean()
    else:
        rank, size, group = sequence
        out, local, shard = forward_shard(model, packed, t, rank, size, group, timer)
        err = (out - target[shard.start : shard.end]).pow(2).mean(dim=1)  # (n_r,)
        loss = sample_means(err, local, shard, group).mean()
    loss.backward()


def saved_activation_bytes(model, packed, t, target) -> int:
    """Bytes autograd keeps for the backward of a step (distinct storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(x):
        s = x.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x):
        err = (model.forward_packed(packed, t) - target).pow(2).mean(dim=1)
    del err
    return sum(storages.values())


def memory_and_alltoall(args, model, rank: int, groups) -> dict:
    area = args.long_tokens // 4  # a 4-frame clip of long_tokens tokens, as square as they divide
    rows = max(d for d in range(1, math.isqrt(area) + 1) if area % d == 0)
    shape = (4, 2 * rows, 2 * (area // rows))  # latent (T, h, w)
    long_row = make_row([shape], [20], args.seed + 1)
    assert long_row[0].tokens.shape[0] == args.long_tokens
    sp = (groups.sequence_rank, groups.sequence_size, groups.sequence_group)
    train_step(model, *make_row([(1, 8, 8)], [5], 0))  # warm-up: allocates every parameter gradient
    model.zero_grad(set_to_none=False)
    peak_sp1, _ = peak_over_baseline(lambda: train_step(model, *long_row))
    model.zero_grad(set_to_none=False)
    dist.barrier()
    peak_sp2, _ = peak_over_baseline(lambda: train_step(model, *long_row, sequence=sp))
    model.zero_grad(set_to_none=False)
    activations = saved_activation_bytes(model, *long_row)
    dist.barrier()
    timer = CommTimer()
    t0 = time.perf_counter()
    train_step(model, *long_row, sequence=sp, timer=timer)
    step_seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=False)
    return dict(peak_sp1=peak_sp1, peak_sp2=peak_sp2, activations=activations, alltoall_s=timer.seconds,
                alltoall_calls=timer.calls, sp2_step_s=step_seconds)


def token_count_steps(lengths: list[int], ranks: int, row_tokens: int, seed: int) -> list[list[list[int]]]:
    """The loader's plan today: rank r's samples order[r::ranks] into rows of the token budget
    (first-fit decreasing), shuffled per rank; step k trains every rank's k-th row."""
    per_rank = []
    for r in range(ranks):
        mine = list(range(r, len(lengths), ranks))
        rows = [[mine[j] for j in row] for row in plan_rows([lengths[i] for i in mine], row_tokens)]
        random.Random(f"bench-parallel-{seed}-{r}").shuffle(rows)
        per_rank.append(rows)
    return [[per_rank[r][k] for r in range(ranks)] for k in range(min(len(p) for p in per_rank))]


def timed_steps(model, steps, rank: int, rows) -> list[list[float]]:
    """Train this rank's row of every step -> per step [cpu seconds, wall seconds] of every rank."""
    out = []
    for step in steps:
        model.zero_grad(set_to_none=False)
        c0, w0 = time.thread_time(), time.perf_counter()
        train_step(model, *rows[tuple(step[rank])])
        times = torch.tensor([time.thread_time() - c0, time.perf_counter() - w0], dtype=torch.float64)
        sum_gradients(model)  # the data-parallel all-reduce the ranks wait at (not timed)
        everyone = [torch.empty_like(times) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, times)
        out.append([e.tolist() for e in everyone])
    return out


def balance(args, model, rank: int, world: int) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    shapes = draw_shapes(args.samples, args.scale, g)
    text_lengths = torch.randint(5, 41, (args.samples,), generator=g).tolist()
    lengths = [num_tokens(s, PATCH) for s in shapes]
    if max(lengths) > args.row_tokens:
        raise ValueError(f"--row-tokens {args.row_tokens} is below the longest clip ({max(lengths)} tokens)")
    cost = cost_model(model.config, "fp32")
    costs = [cost.sample_flops(n, m) for n, m in zip(lengths, text_lengths)]
    plans = {
        "cost": plan_balanced_steps(lengths, costs, world, args.row_tokens).steps,
        "tokens": token_count_steps(lengths, world, args.row_tokens, args.seed),
    }
    rows = {}
    for steps in plans.values():  # each rank builds only the rows it trains
        for step in steps:
            key = tuple(step[rank])
            if key not in rows:
                rows[key] = make_row([shapes[i] for i in key], [text_lengths[i] for i in key],
                                     args.seed + 1000 + min(key))
    train_step(model, *make_row([shapes[0]], [text_lengths[0]], 0))  # warm-up
    result = {}
    for name, steps in plans.items():
        times = timed_steps(model, steps, rank, rows)
        result[name] = dict(
            steps=len(steps),
            samples=sum(len(r) for s in steps for r in s),
            straggler_cpu=straggler_ratio([[t[0] for t in step] for step in times]),
            straggler_wall=straggler_ratio([[t[1] for t in step] for step in times]),
            cost_ratio=straggler_ratio([[sum(costs[i] for i in r) for r in s] for s in steps]),
            step_cpu_s=sum(max(t[0] for t in step) for step in times),
        )
    return dict(samples=args.samples, total_tokens=sum(lengths), max_tokens=max(lengths), **result)


def run(rank: int, world: int, args) -> None:
    torch.set_num_threads(1)
    mmap_large_blocks()
    if world < 2 or world % 2:
        raise ValueError(f"bench.parallel needs an even number of ranks >= 2, got {world}")
    groups = parallel_groups(2)
    model = build_model(args)
    emit(rank, bench="parallel", ranks=world, hidden=args.hidden, depth=args.depth, heads=args.heads,
         params=sum(p.numel() for p in model.parameters()), long_tokens=args.long_tokens,
         date=time.strftime("%Y-%m-%d"))

    mem = memory_and_alltoall(args, model, rank, groups)
    everyone = [None] * world
    dist.all_gather_object(everyone, mem)
    peak_sp1 = max(m["peak_sp1"] for m in everyone)
    peak_sp2 = max(m["peak_sp2"] for m in everyone)
    alltoall = sum(m["alltoall_s"] for m in everyone) / sum(m["sp2_step_s"] for m in everyone)
    emit(rank, measure="memory", peak_sp1_mib=round(peak_sp1 / 2**20, 1),
         peak_sp2_mib=round(peak_sp2 / 2**20, 1),
         per_rank_sp2_mib=[round(m["peak_sp2"] / 2**20, 1) for m in everyone],
         activations_mib=round(everyone[0]["activations"] / 2**20, 1),
         activation_share=round(everyone[0]["activations"] / peak_sp1, 3))
    emit(rank, measure="alltoall", seconds=[round(m["alltoall_s"], 3) for m in everyone],
         calls=everyone[0]["alltoall_calls"], sp2_step_s=[round(m["sp2_step_s"], 3) for m in everyone])

    bal = balance(args, model, rank, world)
    emit(rank, measure="balance", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in bal.items()
                                     if not isinstance(v, dict)})
    for name in ("cost", "tokens"):
        emit(rank, measure="balance", plan=name, **{k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in bal[name].items()})
    emit(rank, peak_mem_ratio_sp2_vs_sp1=round(peak_sp2 / peak_sp1, 3), alltoall_share=round(alltoall, 3),
         straggler_ratio_cost=round(bal["cost"]["straggler_cpu"], 3),
         straggler_ratio_tokens=round(bal["tokens"]["straggler_cpu"], 3),
         activation_share=round(everyone[0]["activations"] / peak_sp1, 3))


def _spawned(rank: int, world: int, init_file: str, args) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        run(rank, world, args)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under deepspeed / torchrun
        dist.init_process_group("gloo", init_method="env://")
        try:
            run(dist.get_rank(), dist.get_world_size(), args)
        finally:
            dist.destroy_process_group()
        return
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(args.ranks, os.path.join(tmp, "init"), args), nprocs=args.ranks)


if __name__ == "__main__":
    main()
