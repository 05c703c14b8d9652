"""Wan transformer benchmark: our packed VideoDiT against diffusers' WanTransformer3DModel on mixed shapes.

    python -m bench.wan [--layers 2] [--repeats 2] [--threads N] [--device cpu|cuda]

The model has Wan2.1-T2V-1.3B's width (dim 1536, 12 heads, FFN 8960, UMT5 text width 4096, 16 latent
channels, patch (1, 2, 2)) at reduced depth (`--layers`, 2-4), random weights (seed 0), in fp32. Both sides
hold the same weights: VideoDiT is built from the diffusers model's state dict (videodit.wan_diffusers).

The sample set is `SHAPES` below (latent (T, h, w); 1,428 real tokens; two shapes repeat; token counts
28..420, 15x apart), each with Wan's 512 text rows and its own timestep. Arms, each timed on the whole set:
- packed:        VideoDiT.forward_samples / forward_packed: every sample in one sequence, one call.
- per_sample:    diffusers, one sample per call (as WanPipeline runs it).
- same_shape:    diffusers, samples of an identical shape batched into one call (all it can batch).
Forward runs under no_grad. The training step is forward + backward of sum_i mean((out_i - target_i)^2)
(per call for the diffusers arms, gradients accumulated: what a batch-of-1 or bucketed trainer does).
Outputs are checked: each diffusers arm's outputs (forward) and loss and patch-embedding gradient (train)
against the packed arm's, as max abs differences.

Time: the best of `--repeats` runs (default 1, which keeps a CPU run to a few minutes), after a warm-up of
each model and mode on the smallest sample. Real tokens/s = 1,428 / time. Peak memory: on
CPU the highest resident set size sampled every 2 ms during a run above the size just before it (glibc is
told to mmap allocations >= 64 KiB, so freed tensors leave the RSS); on CUDA torch's peak allocation above
the allocation before it. A training step's peak includes its gradients (both models' are freed first).

One JSON object per line; the last line is the summary with `speedup_vs_diffusers_forward` and
`speedup_vs_diffusers_train`: packed tokens/s over the better diffusers arm's.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from bench.memory import peak_rss
from videodit.wan_diffusers import build_from_state_dict, to_videodit_state_dict, wan_dit_config

SHAPES: list[tuple[int, int, int]] = [  # latent (T, h, w): tokens = T * h/2 * w/2
    (1, 8, 14),  # 28   an image
    (1, 8, 14),  # 28   the same shape again
    (2, 14, 8),  # 56   portrait
    (3, 12, 12),  # 108
    (3, 12, 12),  # 108  the same shape again
    (5, 8, 14),  # 140
    (7, 8, 12),  # 168
    (3, 12, 20),  # 180
    (4, 12, 16),  # 192
    (5, 14, 24),  # 420
]
TEXT_LEN = 512
WAN_1_3B_WIDTH = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                      out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960)


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def real_tokens() -> int:
    return sum(t * (h // 2) * (w // 2) for t, h, w in SHAPES)


def mmap_large_allocations() -> None:
    """Have glibc mmap every allocation >= 64 KiB, so a freed tensor leaves the resident set at once."""
    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name:
        ctypes.CDLL(name).mallopt(-3, 65536)  # M_MMAP_THRESHOLD


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """Run `fn` once -> (seconds, peak memory above the start in MB, its result)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return seconds, (torch.cuda.max_memory_allocated() - base) / 2**20, out
    return peak_rss(fn)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, object]:
    """The best time of `repeats` runs -> (seconds, peak MB over all, last result)."""
    best, peak, out = float("inf"), 0.0, None
    for _ in range(repeats):
        seconds, mb, out = measure(fn, device)
        best, peak = min(best, seconds), max(peak, mb)
    return best, peak, out


def same_shape_groups() -> list[list[int]]:
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(SHAPES):
        groups[s].append(i)
    return list(groups.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (Wan2.1-1.3B has 30)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per arm (the best counts)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.layers <= 4:
        raise ValueError(f"--layers must be in [1, 4] (a reduced-depth model), got {args.layers}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    mmap_large_allocations()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.seed)
    config = dict(WAN_1_3B_WIDTH, num_layers=args.layers)
    ref = WanTransformer3DModel(**config).to(device).eval()
    cfg = wan_dit_config(dict(ref.config))
    ours = build_from_state_dict(cfg, to_videodit_state_dict(ref.state_dict(), cfg), device).eval()

    g = torch.Generator().manual_seed(args.seed + 1)
    latents = [torch.randn(16, *s, generator=g).to(device) for s in SHAPES]
    targets = [torch.randn(16, *s, generator=g).to(device) for s in SHAPES]
    text = [torch.randn(TEXT_LEN, 4096, generator=g).to(device) for _ in SHAPES]
    steps = torch.randint(0, 1000, (len(SHAPES),), generator=g).to(device)
    n_tokens = real_tokens()
    emit(event="setup", layers=args.layers, threads=args.threads, device=str(device), samples=len(SHAPES),
         real_tokens=n_tokens, shapes=[list(s) for s in SHAPES], same_shape_calls=len(same_shape_groups()),
         params_M=round(sum(p.numel() for p in ours.parameters()) / 1e6, 1))

    def run_ours() -> list[torch.Tensor]:
        return ours.forward_samples(latents, steps.double() / 1000, text)

    def run_diffusers(groups: list[list[int]]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(SHAPES)
        for group in groups:
            pred = ref(torch.stack([latents[i] for i in group]), steps[group],
                       torch.stack([text[i] for i in group]), return_dict=False)[0]
            for i, o in zip(group, pred):
                out[i] = o
        return out  # type: ignore[return-value]

    def loss_of(outs: list[torch.Tensor], idx: list[int]) -> torch.Tensor:
        return sum((o - targets[i]).square().mean() for o, i in zip(outs, idx))

    def train_ours() -> tuple[float, torch.Tensor]:
        ours.zero_grad(set_to_none=True)
        loss = loss_of(run_ours(), list(range(len(SHAPES))))
        loss.backward()
        return float(loss.detach()), ours.x_embedder.weight.grad.detach().clone()

    def train_diffusers(groups: list[list[int]]) -> tuple[float, torch.Tensor]:
        ref.zero_grad(set_to_none=True)
        total = 0.0
        for group in groups:
            pred = ref(torch.stack([latents[i] for i in group]), steps[group],
                       torch.stack([text[i] for i in group]), return_dict=False)[0]
            loss = loss_of(list(pred), group)
            loss.backward()
            total += float(loss.detach())
        grad = ref.patch_embedding.weight.grad.detach()
        return total, grad.reshape(grad.shape[0], -1).clone()

    smallest = [min(range(len(SHAPES)), key=lambda i: SHAPES[i])]

    def ours_on_smallest() -> list[torch.Tensor]:
        return ours.forward_samples([latents[i] for i in smallest], steps[smallest].double() / 1000,
                                    [text[i] for i in smallest])

    with torch.no_grad():  # warm-up of each model and mode: first calls allocate and pick kernels
        ours_on_smallest()
        run_diffusers([smallest])
    loss_of(ours_on_smallest(), smallest).backward()
    train_diffusers([smallest])
    per_sample = [[i] for i in range(len(SHAPES))]
    arms = {"packed": None, "per_sample": per_sample, "same_shape": same_shape_groups()}
    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for arm, groups in arms.items():
            fn = run_ours if groups is None else (lambda groups=groups: run_diffusers(groups))
            seconds, mb, outs = timed(fn, device, args.repeats)
            if groups is None:
                packed_outs = outs
                diff = 0.0
            else:
                diff = max(float((a - b).abs().max()) for a, b in zip(outs, packed_outs))
            results[f"{arm}_forward"] = {"tokens_per_s": n_tokens / seconds}
            calls = 1 if groups is None else len(groups)
            emit(event="forward", arm=arm, calls=calls, seconds=round(seconds, 3),
                 real_tokens_per_s=round(n_tokens / seconds, 1), peak_mb=round(mb, 1),
                 max_abs_diff_vs_packed=diff)
    for arm, groups in arms.items():
        ours.zero_grad(set_to_none=True)  # the peak then includes the step's own gradients
        ref.zero_grad(set_to_none=True)
        fn = train_ours if groups is None else (lambda groups=groups: train_diffusers(groups))
        seconds, mb, (loss, grad) = timed(fn, device, args.repeats)
        if groups is None:
            packed_loss, packed_grad = loss, grad
            loss_diff = grad_diff = 0.0
        else:
            loss_diff, grad_diff = abs(loss - packed_loss), float((grad - packed_grad).abs().max())
        results[f"{arm}_train"] = {"tokens_per_s": n_tokens / seconds}
        calls = 1 if groups is None else len(groups)
        emit(event="train_step", arm=arm, calls=calls, seconds=round(seconds, 3),
             real_tokens_per_s=round(n_tokens / seconds, 1), peak_mb=round(mb, 1), loss=loss,
             loss_diff_vs_packed=loss_diff, patch_grad_max_abs_diff_vs_packed=grad_diff)

    def speedup(kind: str) -> float:
        best = max(results[f"{arm}_{kind}"]["tokens_per_s"] for arm in ("per_sample", "same_shape"))
        return round(results[f"packed_{kind}"]["tokens_per_s"] / best, 3)

    emit(event="summary", layers=args.layers, threads=args.threads, device=str(device), real_tokens=n_tokens,
         speedup_vs_diffusers_forward=speedup("forward"), speedup_vs_diffusers_train=speedup("train"))


if __name__ == "__main__":
    main()
