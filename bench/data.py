"""Data pipeline throughput: decode + resize with decord and with av on the same clips, and latent-cache
reads. One core (torch and decoders single-threaded). Prints one JSON object per line.

    python -m bench.data [--clips 6] [--frames 64] [--size 360x640] [--out-size 180x320]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from data.precache import INDEX, LatentCache, shard_name
from videodit.video_reader import decode_frames, probe_video


def write_clips(folder: Path, n: int, frames: int, height: int, width: int) -> list[Path]:
    from videodit.mp4 import Mp4Writer

    paths = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        path = folder / f"clip{i}.mp4"
        with Mp4Writer(path, fps=24, height=height, width=width, crf=23) as w:
            for f in range(frames):
                img = [127 + 100 * np.sin(xx / (9 + c) + yy / (13 + i) + 0.2 * f + c) for c in range(3)]
                w.write(np.stack(img, -1).clip(0, 255).astype(np.uint8)[None])  # (1, H, W, 3)
        paths.append(path)
    return paths


def bench_decode(paths: list[Path], backend: str, num: int, stride: int, size: tuple[int, int],
                 repeats: int) -> dict:
    """Samples/s of probe + decode `num` frames at `stride` + resize, one core."""
    decode_frames(paths[0], [0], size=size, backend=backend)  # warm-up
    t0 = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for p in paths:
            info = probe_video(p, backend)
            idx = list(range(0, min(info.num_frames, num * stride), stride))
            frames = decode_frames(p, idx, size=size, backend=backend)
            assert frames.shape == (len(idx), *size, 3)
            count += 1
    dt = time.perf_counter() - t0
    return {"bench": "decode_resize", "backend": backend, "samples_per_s_per_core": count / dt,
            "frames_per_s_per_core": count * num / dt, "frames_per_sample": num, "stride": stride,
            "out_size": f"{size[0]}x{size[1]}", "samples": count}


def bench_cache(folder: Path, n: int, latent_shape: tuple[int, ...], text_len: int, repeats: int) -> dict:
    """Samples/s and MB/s reading latent + text tensors from a cache folder (page-cache warm)."""
    tensors, samples = {}, []
    for i in range(n):
        tensors[f"latent.{i}"] = torch.randn(latent_shape)
        tensors[f"text.{i}"] = torch.randn(text_len, 384)
        samples.append({"index": i, "path": f"clip{i}", "caption": "x", "shard": shard_name(0),
                        "latent_shape": list(latent_shape), "text_len": text_len})
    save_file(tensors, str(folder / f"{shard_name(0)}.safetensors"))
    (folder / INDEX).write_text(json.dumps({"samples": samples, "skipped": []}))
    cache = LatentCache(folder)
    nbytes = sum(t.numel() * 4 for t in tensors.values()) / n
    t0 = time.perf_counter()
    for _ in range(repeats):
        for j in range(len(cache)):
            cache.load(j)
    dt = time.perf_counter() - t0
    return {"bench": "latent_cache_read", "samples_per_s_per_core": n * repeats / dt,
            "mb_per_s": n * repeats * nbytes / dt / 1e6, "latent_shape": list(latent_shape),
            "text_len": text_len, "bytes_per_sample": int(nbytes)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--frames", type=int, default=64, help="frames per source clip")
    p.add_argument("--size", default="360x640", help="source HEIGHTxWIDTH")
    p.add_argument("--out-size", default="176x320", help="resize target HEIGHTxWIDTH")
    p.add_argument("--num", type=int, default=17, help="frames decoded per sample")
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    H, W = (int(x) for x in args.size.split("x"))
    size = tuple(int(x) for x in args.out_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_clips(tmp, args.clips, args.frames, H, W)
        for backend in ("decord", "av"):
            rec = bench_decode(paths, backend, args.num, args.stride, size, args.repeats)
            print(json.dumps({**rec, "source": f"{H}x{W}x{args.frames}f h264"}), flush=True)
        (tmp / "cache").mkdir()
        print(json.dumps(bench_cache(tmp / "cache", 64, (16, 5, 22, 40), 20, 5)), flush=True)


if __name__ == "__main__":
    main()
