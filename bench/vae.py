"""VAE benchmark: throughput vs diffusers AutoencoderKLWan, streaming memory, tiling seam error.

    python -m bench.vae [--frames 17 --size 128 --threads 2]

Prints one JSON object per line; the last line is the summary with `ratio_vs_diffusers_wan` (our
encode+decode frames/s over AutoencoderKLWan's at the same base width, max width, residual blocks per
level and latent channels, same input, same process) and `peak_mem_ratio_long_vs_short` (peak memory
above the pre-encode baseline of streamed encode+decode at 129 frames over 17 frames, each case in its
own subprocess with MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave RSS, sampled from
/proc/self/statm every 2 ms; ru_maxrss is not used: a forked child inherits the parent's high-water mark).
`refiner_decode_time_ratio`: decode time of the shipped (patch) architecture with its pixel refiner over
without it, same latent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bench.memory import peak_rss
from vae3d import CausalVAE3D, VAEConfig

OURS = VAEConfig()  # the VAEConfig defaults (conv pyramid): widths 32/64/128, 1 res block per level


def wan_like():
    """diffusers AutoencoderKLWan like ours: base 32, max 128, 1 res block, z 16, ts 4, ss 8."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def throughput(frames: int, size: int) -> dict:
    torch.manual_seed(0)
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    ours = CausalVAE3D(OURS).eval()
    wan = wan_like()

    def run_ours():
        ours.decode(ours.encode(video), num_frames=frames, tile=0)

    def run_ours_streamed():
        z = ours.encode(video, chunk_frames=8)
        for _ in ours.decode_stream(z, num_frames=frames, chunk_frames=8, tile=0):
            pass

    def run_wan():
        return wan.decode(wan.encode(video).latent_dist.mean).sample

    t_ours, t_stream, t_wan = timed(run_ours), timed(run_ours_streamed), timed(run_wan)
    return {
        "case": "throughput", "frames": frames, "size": f"{size}x{size}", "threads": torch.get_num_threads(),
        "ours_params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 3),
        "wan_params_M": round(sum(p.numel() for p in wan.parameters()) / 1e6, 3),
        "ours_s": round(t_ours, 3), "ours_streamed_s": round(t_stream, 3), "wan_s": round(t_wan, 3),
        "ours_fps": round(frames / t_ours, 2), "wan_fps": round(frames / t_wan, 2),
        "ratio_vs_diffusers_wan": round(t_wan / t_ours, 3),
        "ratio_streamed_vs_diffusers_wan": round(t_wan / t_stream, 3),
    }


@torch.no_grad()
def seam_error(size_h: int = 256, size_w: int = 384, tile: int = 128) -> dict:
    """Tiled vs untiled decode and encode of the default architecture (random init)."""
    torch.manual_seed(0)
    m = CausalVAE3D(OURS).eval()
    video = torch.rand(1, 3, 5, size_h, size_w) * 2 - 1
    z = m.encode(video, tile=0)
    x = m.decode(z, tile=0)
    xt = m.decode(z, tile=tile)
    zt = m.encode(video, tile=tile)
    return {"case": "seam", "size": f"{size_h}x{size_w}", "tile": tile,
            "decode_max_abs": round((xt - x).abs().max().item(), 5),
            "decode_mean_abs": round((xt - x).abs().mean().item(), 6),
            "decode_mean_abs_rel": round(((xt - x).abs().mean() / x.abs().mean()).item(), 5),
            "encode_mean_abs_rel": round(((zt - z).abs().mean() / z.abs().mean()).item(), 5)}


@torch.no_grad()
def refiner_cost(frames: int, size_h: int, size_w: int, repeats: int = 3) -> dict:
    """Decode time of the shipped architecture (`arch: patch`) with its pixel refiner (refine_channels 32)
    over the same decoder without one (random init, same latent; best of `repeats`)."""
    from vae3d.io import DEFAULT_DIR

    cfg = json.loads((DEFAULT_DIR / "config.json").read_text())["config"]
    times = {}
    for width in (0, 32):
        torch.manual_seed(0)
        m = CausalVAE3D(VAEConfig(**{**cfg, "refine_channels": width})).eval()
        z = torch.randn(1, m.latent_channels, m.num_latent_frames(frames), size_h // 8, size_w // 8)
        m.decode(z, num_frames=frames)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            m.decode(z, num_frames=frames)
            best = min(best, time.perf_counter() - t0)
        times[width] = best
    return {"case": "refiner", "frames": frames, "size": f"{size_h}x{size_w}",
            "decode_s_without": round(times[0], 4), "decode_s_with": round(times[32], 4),
            "refiner_decode_time_ratio": round(times[32] / times[0], 3)}


@torch.no_grad()
def memory_case(frames: int, size: int) -> dict:
    """Run in a subprocess: peak RSS above the baseline during streamed encode + decode_stream."""
    torch.manual_seed(0)
    m = CausalVAE3D(OURS).eval()
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    m.decode(m.encode(video[:, :, :9], chunk_frames=8), chunk_frames=8)  # warm allocator/kernels

    def run() -> int:
        z = m.encode(video, chunk_frames=8)
        n = 0
        for chunk in m.decode_stream(z, num_frames=frames, chunk_frames=8, tile=0):
            n += chunk.shape[2]  # a consumer (e.g. an mp4 writer) would write and drop each chunk
        return n

    seconds, peak_mb, n = peak_rss(run)
    assert n == frames
    return {"frames": frames, "peak_above_baseline_MB": round(peak_mb, 2),
            "seconds": round(seconds, 3)}


def memory_in_subprocess(frames: int, size: int, threads: int) -> dict:
    code = (f"import json, torch; torch.set_num_threads({threads}); from bench.vae import memory_case; "
            f"print(json.dumps(memory_case({frames}, {size})))")
    # large allocations go straight to mmap and back to the OS on free, so RSS tracks live tensors
    # rather than glibc heap fragmentation
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return {"case": "memory", "size": f"{size}x{size}", **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--mem-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tp = throughput(args.frames, args.size)
    print(json.dumps(tp), flush=True)
    seam = seam_error()
    print(json.dumps(seam), flush=True)
    refiners = [refiner_cost(args.frames, args.size, args.size),
                refiner_cost(args.frames, 480, 832, repeats=1)]
    for r in refiners:
        print(json.dumps(r), flush=True)
    short = memory_in_subprocess(17, args.mem_size, args.threads)
    print(json.dumps(short), flush=True)
    long = memory_in_subprocess(129, args.mem_size, args.threads)
    print(json.dumps(long), flush=True)
    summary = {
        "bench": "vae", "frames": args.frames, "size": tp["size"], "threads": args.threads,
        "ratio_vs_diffusers_wan": tp["ratio_vs_diffusers_wan"],
        "peak_mem_ratio_long_vs_short": round(long["peak_above_baseline_MB"]
                                              / max(short["peak_above_baseline_MB"], 1e-6), 3),
        "seam_decode_mean_abs_rel": seam["decode_mean_abs_rel"],
        "refiner_decode_time_ratio": refiners[0]["refiner_decode_time_ratio"],
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
