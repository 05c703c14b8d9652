"""Latents the DiT draws for real clips, paired with those clips: training data for a decoder that decodes
what the DiT actually produces rather than what the encoder produces.

    python -m data.dit_pairs --manifest runs/world_dit2/train.jsonl --out runs/pairs --num 2000 \
        [--dit default] [--vae default] [--strength 0.2 0.6] [--max-frames 17]

For each clip (the first `--max-frames` frames, centre-cropped to the VAE's spatial stride): encode it with
the VAE, noise the latent to a random level in `--strength` and let the DiT denoise it from there with the
clip's own caption and the checkpoint's sampler, steps and guidance (SDEdit, `videodit.sampling.Request`'s
`init` / `strength`). The latent that comes out carries the DiT's own errors (ragged edges, holes,
texture on flat objects) over the clip's true layout, so (latent, clip) pairs teach a decoder to turn
DiT output into clean frames (`train_vae.py` `data.pairs`). Moderate strengths keep the layout: the
object's place and path are decided above them.

Output: OUT/pairs-00000.pt, ... (a list of {"frames" uint8 (F, H, W, 3), "latent" float16 (C, T, h, w)
normalised, "caption", "strength"} each), written atomically; a rerun skips shards already written.
Unreadable clips are skipped and counted in OUT/index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

SHARD = "pairs-{:05d}.pt"


def _clip(entry, max_frames: int, stride: int) -> np.ndarray:
    """A manifest entry's first `max_frames` frames, centre-cropped so H and W are multiples of `stride`."""
    from data.decode import decode_video

    path = entry.path
    frames = decode_video(path, num_frames=max_frames, start=entry.start, end=entry.end)  # (F, H, W, 3)
    _, h, w, _ = frames.shape
    hh, ww = h // stride * stride, w // stride * stride
    if hh == 0 or ww == 0:
        raise ValueError(f"{path}: {h}x{w} is smaller than the VAE's stride {stride}")
    top, left = (h - hh) // 2, (w - ww) // 2
    return np.ascontiguousarray(frames[:, top: top + hh, left: left + ww])


@torch.no_grad()
def draw_latents(dit, vae, text, flow_cfg, clips: list[np.ndarray], captions: list[str],
                 strengths: list[float], seeds: list[int], steps: int, guidance: float,
                 sampler: str = "euler") -> list[torch.Tensor]:
    """SDEdit each clip's latent with its caption -> the DiT's latents (C, T, h, w) float32, normalised."""
    from videodit.sampling import Request, sample

    states, _ = text.encode(captions)
    reqs = []
    for frames, state, s, seed in zip(clips, states, strengths, seeds):
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
        z = vae.encode(video, tile=0)[0]  # (C, T, h, w)
        reqs.append(Request(tuple(z.shape[1:]), state, seed=seed, init=z, strength=s))
    return sample(dit, reqs, steps=steps, sampler=sampler, guidance=guidance, flow_cfg=flow_cfg,
                  progress=False)


def build_pairs(manifest: str | Path, out: str | Path, num: int, dit: str = "default", vae: str = "default",
                strength: tuple[float, float] = (0.2, 0.6), max_frames: int = 17, shard_size: int = 100,
                batch: int = 16, seed: int = 0) -> dict:
    from data.manifest import read_manifest
    from vae3d.io import load_vae
    from videodit.checkpoint import load_dit
    from videodit.config import from_dict
    from videodit.flow import FlowConfig
    from videodit.text_encoder import TextEncoder

    lo, hi = strength
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"strength must be LO HI with 0 < LO <= HI <= 1, got {strength}")
    if num < 1 or shard_size < 1 or batch < 1 or max_frames < 1:
        raise ValueError("num, shard_size, batch and max_frames must be >= 1")
    entries = read_manifest(manifest)
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    order = order[:num]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_dit(dit)
    model.eval()
    autoencoder = load_vae(vae).eval()
    text = TextEncoder(meta["text_encoder"])
    flow_cfg = from_dict(FlowConfig, meta.get("flow") or {}, "meta.flow")
    sampling = meta.get("sampling") or {}
    steps, guidance = int(sampling.get("steps", 30)), float(sampling.get("cfg", 5.0))
    sampler = sampling.get("sampler", "euler")
    skipped, written = 0, 0
    for k, first in enumerate(range(0, len(order), shard_size)):
        path = out / SHARD.format(k)
        rows = order[first: first + shard_size]
        if path.is_file():
            written += len(torch.load(path, weights_only=False))
            continue
        rng = random.Random(f"{seed}-{k}")
        items = []
        for b in range(0, len(rows), batch):
            clips, caps, idx = [], [], []
            for i in rows[b: b + batch]:
                e = entries[i]
                try:
                    clips.append(_clip(e, max_frames, autoencoder.spatial_stride))
                except (OSError, ValueError):
                    skipped += 1
                    continue
                caps.append(e.caption)
                idx.append(i)
            if not clips:
                continue
            strengths = [rng.uniform(lo, hi) for _ in clips]
            seeds = [seed * 1_000_003 + i for i in idx]
            latents = draw_latents(model, autoencoder, text, flow_cfg, clips, caps, strengths, seeds, steps,
                                   guidance, sampler)
            for frames, z, cap, s in zip(clips, latents, caps, strengths):
                items.append({"frames": torch.from_numpy(frames), "latent": z.half(), "caption": cap,
                              "strength": round(s, 4)})
        if not items:
            raise ValueError(f"none of the {len(rows)} clips for {path.name} could be read ({skipped} "
                             f"skipped so far); check the manifest's paths")
        tmp = path.with_suffix(".tmp")
        torch.save(items, tmp)
        os.replace(tmp, path)
        written += len(items)
        print(json.dumps({"shard": path.name, "pairs": len(items), "total": written, "skipped": skipped}),
              flush=True)
    index = {"pairs": written, "skipped": skipped, "manifest": str(manifest), "dit": dit, "vae": vae,
             "strength": [lo, hi], "max_frames": max_frames, "steps": steps, "cfg": guidance,
             "sampler": sampler}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def load_pairs(folder: str | Path) -> list[dict]:
    """Every pair under `folder` (its pairs-*.pt shards, in order)."""
    shards = sorted(Path(folder).glob("pairs-*.pt"))
    if not shards:
        raise ValueError(f"no pairs-*.pt shards in {str(folder)!r} (make them with python -m data.dit_pairs)")
    return [item for s in shards for item in torch.load(s, weights_only=False)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=2000, help="clips to use (a seeded shuffle of the manifest)")
    ap.add_argument("--dit", default="default")
    ap.add_argument("--vae", default="default")
    ap.add_argument("--strength", type=float, nargs=2, default=(0.2, 0.6), metavar=("LO", "HI"))
    ap.add_argument("--max-frames", type=int, default=17)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16, help="clips denoised together")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not Path(a.manifest).is_file():
        ap.error(f"--manifest {a.manifest!r} does not exist")
    try:
        print(json.dumps(build_pairs(a.manifest, a.out, a.num, a.dit, a.vae, tuple(a.strength), a.max_frames,
                                     a.shard_size, a.batch, a.seed)))
    except ValueError as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
