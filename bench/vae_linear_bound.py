"""What a linear code of the VAE's size reconstructs: PCA on space-time blocks against the VAE, same clips.

    python -m bench.vae_linear_bound --fit runs/natural/train.jsonl --clips runs/natural/heldout.jsonl \
        [--vae default] [--components 16 32] [--fit-clips 150] [--max-clips 40]

Cuts clips into the VAE's (ts, ss, ss) RGB space-time blocks (first frame replicated ts - 1 times in
front, as the causal encoder does), fits PCA on blocks of `--fit-clips` clips from `--fit`, and
reconstructs every block of the `--clips` clips from its top-k coefficients. k = latent channels is a
linear encoder/decoder with the VAE's latent budget. Prints one JSON line per k and one for the VAE on the
same frames (each clip cut to 1 + m * ts frames and to multiples of ss), with mean PSNR in dB.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch

from videodit.eval import list_videos, psnr, vae_psnr
from videodit.mp4 import read_mp4


def load_clip(path, ts: int, ss: int) -> np.ndarray:
    """mp4 -> uint8 (F, H, W, 3), F = 1 + m * ts, H and W multiples of ss."""
    f = read_mp4(path)
    n, h, w, _ = f.shape
    n = 1 + (n - 1) // ts * ts
    return np.ascontiguousarray(f[:n, : h // ss * ss, : w // ss * ss])


def as_float(clip: np.ndarray) -> np.ndarray:
    return clip.astype(np.float32) / 127.5 - 1


def to_blocks(clip: np.ndarray, ts: int, ss: int) -> np.ndarray:
    """(F, H, W, 3) -> (num_blocks, ts * ss * ss * 3), the first frame replicated in front."""
    x = np.concatenate([np.repeat(clip[:1], ts - 1, axis=0), clip])
    t, h, w = x.shape[0] // ts, x.shape[1] // ss, x.shape[2] // ss
    x = x.reshape(t, ts, h, ss, w, ss, 3).transpose(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(t * h * w, -1)


def from_blocks(blocks: np.ndarray, shape: tuple, ts: int, ss: int) -> np.ndarray:
    n, hh, ww, _ = shape
    t, h, w = (n + ts - 1) // ts, hh // ss, ww // ss
    x = blocks.reshape(t, h, w, ts, ss, ss, 3).transpose(0, 3, 1, 4, 2, 5, 6).reshape(t * ts, hh, ww, 3)
    return x[ts - 1:]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", required=True, help="manifest/folder of clips to fit the PCA on")
    ap.add_argument("--clips", required=True, help="manifest/folder of clips to reconstruct")
    ap.add_argument("--vae", default="default", help="VAE to compare ('' for none)")
    ap.add_argument("--components", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--fit-clips", type=int, default=150)
    ap.add_argument("--max-clips", type=int, default=40)
    ap.add_argument("--ts", type=int, default=4)
    ap.add_argument("--ss", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    fit = [p for p, _ in list_videos(a.fit)]
    fit = random.Random(a.seed).sample(fit, min(a.fit_clips, len(fit)))
    clips = [load_clip(p, a.ts, a.ss) for p, _ in list_videos(a.clips)[: a.max_clips]]
    if not fit or not clips:
        ap.error("--fit and --clips need at least one readable clip each")
    t0 = time.time()
    x = np.concatenate([to_blocks(as_float(load_clip(p, a.ts, a.ss)), a.ts, a.ss) for p in fit])
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)  # rows: principal directions
    lines = []
    for k in a.components:
        basis = vt[:k]
        scores = []
        for clip in map(as_float, clips):
            b = to_blocks(clip, a.ts, a.ss) - mean
            rec = from_blocks(b @ basis.T @ basis + mean, clip.shape, a.ts, a.ss)
            scores.append(psnr(torch.from_numpy(clip), torch.from_numpy(np.clip(rec, -1, 1))))
        lines.append({"code": f"pca{k}", "values_per_block": k, "psnr_db": round(float(np.mean(scores)), 2),
                      "clips": len(clips), "fit_blocks": len(x), "seconds": round(time.time() - t0, 1)})
        print(json.dumps(lines[-1]), flush=True)
    if a.vae:
        from vae3d.io import load_vae

        vae = load_vae(a.vae).eval()
        t0 = time.time()
        lines.append({"code": f"vae:{a.vae}", "values_per_block": vae.latent_channels,
                      "psnr_db": round(vae_psnr(vae, clips), 2), "clips": len(clips),
                      "seconds": round(time.time() - t0, 1)})
        print(json.dumps(lines[-1]), flush=True)
    return lines


if __name__ == "__main__":
    main()
