"""NaViT packing benchmark: token utilization, training-step speed vs padding, and MFU.

    python -m bench.packing [--samples 1000] [--budget 2048] [--scale 0.5] [--hidden 768] [--depth 2]
                            [--heads 12] [--seconds 10] [--device cpu|cuda] [--dtype auto|fp32|bf16]

The default model has the width of DiT-B (hidden 768, 12 heads: the smallest size people train
text-to-video DiTs at) with 2 blocks instead of 12, so the CPU run takes minutes; every block is the same,
so depth changes the time per step but hardly the FLOP mix that MFU measures. Width does change it: at
hidden 256 per-token elementwise work (norms, modulation, RoPE, GELU) is a far larger share of the step
than at 768 (see BENCHMARKS.md for both).

Prints one JSON object per line; the last line is the summary with `utilization`,
`baseline_utilization`, `speedup_vs_padded` and `mfu`.

The sample set (documented distribution, fixed seed), shaped like a web-video corpus under NaViT-style
resolution sampling, in pixel units before a VAE of stride (4, 8, 8) and tubelets (1, 2, 2):
- 20% images (1 frame); 80% videos of F = 1 + 4k frames, k uniform in 2..12 (9..49 frames -> T = 3..13).
- aspect ratio W/H: 16:9 45%, 9:16 15%, 4:3 15%, 1:1 10%, 3:4 5%, 21:9 5%, 2:3 5%, each jittered by
  +-5% (crops vary); area: sqrt(H*W) uniform in [96, 256] * `--scale` px (0.5 keeps the CPU run to a
  couple of minutes; a GPU run would use a larger scale and budget). H and W are rounded to multiples
  of 16 (VAE stride x patch), at least 16.
- text: 5..40 tokens of width 384 per sample.

Utilization = real tokens / tokens a fixed-budget step processes:
- packed:    first-fit-decreasing rows of `--budget` tokens (plan_rows); the model itself never pads, so
             this counts each row's unused budget as waste (the conservative figure).
- padded:    every sample padded to the largest (T', H', W') box of the set, batches of budget//box.
- bucketed:  each sample padded up to the smallest enclosing bucket of a fixed table (6 areas x 7 aspect
             ratios x 5 durations, Open-Sora-like but padding instead of cropping so no content is lost),
             batches of budget//bucket per bucket, last batch of each bucket padded with empty slots.
speedup_vs_padded = real tokens/s of a training step (forward + backward + AdamW) on packed rows over the
same on padded batches, same model, same process. mfu = model FLOP/s of the packed step (matmuls and
attention, 3x forward) over this machine's matmul peak measured in this run for the step's dtype.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from videodit.model import DiTConfig, VideoDiT
from videodit.packing import num_tokens, pack, plan_rows

PATCH = (1, 2, 2)
CHANNELS = 16
TEXT_DIM = 384
ASPECTS = {16 / 9: 0.45, 9 / 16: 0.15, 4 / 3: 0.15, 1.0: 0.10, 3 / 4: 0.05, 21 / 9: 0.05, 2 / 3: 0.05}
BUCKET_SIDES = (96, 128, 160, 192, 224, 256)
BUCKET_T = (1, 5, 7, 10, 13)


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def draw_shapes(n: int, scale: float, g: torch.Generator) -> list[tuple[int, int, int]]:
    """Latent (T, h, w) of `n` samples from the documented distribution."""
    aspects, weights = list(ASPECTS), torch.tensor(list(ASPECTS.values()))
    shapes = []
    for _ in range(n):
        u = torch.rand(4, generator=g).tolist()
        frames = 1 if u[0] < 0.2 else 1 + 4 * int(torch.randint(2, 13, (1,), generator=g))
        a = aspects[int(torch.multinomial(weights, 1, generator=g))] * (0.95 + 0.1 * u[1])
        side = (96 + (256 - 96) * u[2]) * scale
        H = max(16, round(side / math.sqrt(a) / 16) * 16)
        W = max(16, round(side * math.sqrt(a) / 16) * 16)
        shapes.append((1 + (frames - 1) // 4, H // 8, W // 8))
    return shapes


def bucket_table(scale: float) -> list[tuple[int, int, int]]:
    out = []
    for side in BUCKET_SIDES:
        for a in ASPECTS:
            H = max(16, math.ceil(side * scale / math.sqrt(a) / 16) * 16)
            W = max(16, math.ceil(side * scale * math.sqrt(a) / 16) * 16)
            out += [(t, H // 8, W // 8) for t in BUCKET_T]
    return out


def bucketed_utilization(shapes, budget: int, scale: float) -> float:
    table = sorted(bucket_table(scale), key=lambda b: num_tokens(b, PATCH))
    counts: dict[tuple[int, int, int], int] = {}
    for s in shapes:
        fits = [b for b in table if all(x <= y for x, y in zip(s, b))]
        b = fits[0] if fits else tuple(max(x, y) for x, y in zip(s, table[-1]))  # oversize: its own bucket
        counts[b] = counts.get(b, 0) + 1
    processed = 0
    for b, n in counts.items():
        per = num_tokens(b, PATCH)
        bs = max(1, budget // per)
        processed += math.ceil(n / bs) * bs * per
    return sum(num_tokens(s, PATCH) for s in shapes) / processed


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matmul on this machine (n = 2048 fp32 / 1024 bf16 on CPU, 8192 on GPU)."""
    n = 8192 if device.type == "cuda" else (2048 if dtype == torch.float32 else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best, start = 0.0, time.perf_counter()
    a @ b
    while best == 0.0 or time.perf_counter() - start < seconds:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
        _sync(device)
        best = max(best, (10 if device.type == "cuda" else 1) * 2 * n**3 / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(cfg: DiTConfig, seqlens: list[int], text_lens: list[int]) -> float:
    """Matmul + attention FLOPs of one training step (3x forward) on samples of these lengths."""
    D, N, M, S = cfg.hidden_size, sum(seqlens), sum(text_lens), len(seqlens)
    hidden = int(D * cfg.mlp_ratio)
    per_block = N * (4 * D * D + 2 * D * D + 2 * D * hidden) + M * 2 * D * D + S * 6 * D * D
    attn = sum(4 * L * L * D + 4 * L * lt * D for L, lt in zip(seqlens, text_lens))
    fwd = (
        2 * (cfg.depth * per_block + N * cfg.patch_dim * D * 2 + M * (TEXT_DIM * D + D * D))
        + cfg.depth * attn
    )
    return 3.0 * fwd


def timed_steps(model, opt, batches, device, bf16: bool, seconds: float) -> tuple[float, int, float]:
    """Training steps over `batches` of (latents, texts, real tokens) for about `seconds`.

    Returns (timed seconds, real tokens, model FLOPs) of the steps after the first (warm-up) one."""
    elapsed, tokens, flops = 0.0, 0, 0.0
    for i, (latents, texts, real) in enumerate(batches):
        packed = pack(latents, texts, PATCH).to(device)
        target = torch.randn_like(packed.tokens)
        t = torch.rand(packed.num_samples, device=device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (model.forward_packed(packed, t).float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i > 0:  # the first step is a warm-up
            elapsed += time.perf_counter() - t0
            tokens += real
            flops += step_flops(model.config, packed.seqlens, torch.diff(packed.text_cu_seqlens).tolist())
        if elapsed > seconds and i >= 2:
            break
    return elapsed, tokens, flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1000, help="drawn for utilization; timing uses a few")
    p.add_argument("--budget", type=int, default=2048, help="tokens per packed row")
    p.add_argument("--scale", type=float, default=0.5, help="multiplies the pixel side range [96, 256]")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument(
        "--seconds", type=float, default=10.0, help="timed seconds per arm (after one warm-up step)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on GPU")
    p.add_argument("--attention", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = torch.device(args.device)
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    g = torch.Generator().manual_seed(args.seed)

    shapes = draw_shapes(args.samples, args.scale, g)
    lengths = [num_tokens(s, PATCH) for s in shapes]
    real = sum(lengths)
    emit(
        event="dataset",
        samples=len(shapes),
        real_tokens=real,
        min_tokens=min(lengths),
        max_tokens=max(lengths),
        images=sum(s[0] == 1 for s in shapes),
        budget=args.budget,
    )

    rows = plan_rows(lengths, args.budget)
    util = real / (len(rows) * args.budget)
    box = tuple(max(s[i] for s in shapes) for i in range(3))
    box_tokens = num_tokens(box, PATCH)
    per_batch = max(1, args.budget // box_tokens)
    util_padded = real / (math.ceil(len(shapes) / per_batch) * per_batch * box_tokens)
    util_bucketed = bucketed_utilization(shapes, args.budget, args.scale)
    emit(
        event="utilization",
        packed=util,
        rows=len(rows),
        padded=util_padded,
        padded_box=box,
        padded_box_tokens=box_tokens,
        bucketed=util_bucketed,
    )

    cfg = DiTConfig(
        in_channels=CHANNELS,
        text_dim=TEXT_DIM,
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=args.heads,
        patch=PATCH,
        attention=args.attention,
    )
    torch.manual_seed(args.seed)
    model = VideoDiT(cfg).to(device).train()
    with torch.no_grad():  # off the zero init, so the step does real work everywhere
        for prm in model.parameters():
            prm.add_(0.02 * torch.randn_like(prm))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    text_lens = torch.randint(5, 41, (len(shapes),), generator=g).tolist()
    texts = [torch.randn(n, TEXT_DIM, generator=g) for n in text_lens]
    latent = lambda s: torch.randn(CHANNELS, *s, generator=g)  # noqa: E731

    order = torch.randperm(len(rows), generator=g).tolist()
    packed_batches = (
        ([latent(shapes[i]) for i in rows[r]], [texts[i] for i in rows[r]], sum(lengths[i] for i in rows[r]))
        for r in order
    )
    t_pk, tok_pk, fl_pk = timed_steps(model, opt, packed_batches, device, bf16, args.seconds)
    emit(event="packed_step", steps_tokens=tok_pk, seconds=t_pk, real_tokens_per_s=tok_pk / t_pk)

    sample_order = torch.randperm(len(shapes), generator=g).tolist()
    chunks = [sample_order[i : i + per_batch] for i in range(0, len(shapes), per_batch)]
    padded_batches = (
        (
            [torch.nn.functional.pad(latent(shapes[i]), _pad(shapes[i], box)) for i in c],
            [texts[i] for i in c],
            sum(lengths[i] for i in c),
        )
        for c in chunks
    )
    t_pd, tok_pd, _ = timed_steps(model, opt, padded_batches, device, bf16, args.seconds)
    emit(event="padded_step", steps_tokens=tok_pd, seconds=t_pd, real_tokens_per_s=tok_pd / t_pd)

    dtype = torch.bfloat16 if bf16 else torch.float32
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16, 1.0)}
    achieved = fl_pk / t_pk
    emit(
        event="peak",
        device=str(device),
        fp32_flops=peaks["fp32"],
        bf16_flops=peaks["bf16"],
        step_dtype=str(dtype),
    )
    emit(
        event="summary",
        utilization=round(util, 4),
        baseline_utilization={"padded": round(util_padded, 4), "bucketed": round(util_bucketed, 4)},
        speedup_vs_padded=round((tok_pk / t_pk) / (tok_pd / t_pd), 3),
        mfu=round(achieved / peaks["bf16" if bf16 else "fp32"], 3),
        achieved_flops=achieved,
        model=dict(
            hidden=args.hidden,
            depth=args.depth,
            heads=args.heads,
            params=sum(p.numel() for p in model.parameters()),
        ),
        device=str(device),
        threads=torch.get_num_threads(),
        attention=args.attention,
    )


def _pad(shape: tuple[int, int, int], box: tuple[int, int, int]) -> list[int]:
    """F.pad amounts that grow a (C, T, h, w) latent of `shape` to `box` at the tail."""
    return [0, box[2] - shape[2], 0, box[1] - shape[1], 0, box[0] - shape[0]]


if __name__ == "__main__":
    main()
