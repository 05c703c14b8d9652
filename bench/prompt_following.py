"""Prompt following of a DiT + VAE on the evaluation prompts, read against the VAE's own ceiling.

    python -m bench.prompt_following [--dit default] [--vae V] [--seeds 1000 2000] [--latents DIR]

For each seed base and each of the evaluation's prompts (`data.synthetic.load_eval_prompts`: 96, half on
held-out combinations; line i gets seed base + i, as `generate.py --prompts-file --seed BASE` would give
it), samples 17 frames of 128x128 with the checkpoint's sampler settings (or --steps / --cfg / --sampler),
all requests of a seed base packed into shared forward passes (`videodit.pipeline`), decodes and writes
each clip as mp4 as `generate.py` does, reads it back and scores it with `videodit.eval.score_clips`.

The VAE ceiling, measured in the same run: each prompt's ground truth, rendered by the world's own sampler
with the same seed, size and length, is encoded by the same VAE, decoded and written the same way and
scored the same way. A DiT that reproduced the VAE's latents exactly would score these figures, so the
generated ones are read against them.

`--latents DIR` keeps the sampled latents (DIR/latents-BASE.pt) and reuses them when present, so two VAEs
can be compared on exactly the same DiT output. `--out DIR` keeps the mp4s and a manifest for
`python -m videodit.eval --videos DIR/manifest.jsonl`. Prints one JSON line per prompted shape (clips read
right, their median fill), one line per seed base, the ceiling line (`"source": "vae_ceiling"`) and last
the summary of all generated clips (`"source": "generated"`).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

import torch

from data.synthetic import load_eval_prompts, render_eval_clip
from videodit import pipeline
from videodit.eval import score_clips
from videodit.mp4 import read_mp4
from videodit.sampling import SAMPLERS
from videodit.video_request import VideoRequest, latent_shape


def figures(scores: dict) -> dict:
    """score_clips' accuracies -> {"all_colour": percent, ..., "heldout_all": percent}; None where the set
    has no such clip (a prompt file without held-out rows)."""
    return {f"{k}_{a}": None if scores[k][a] is None else round(100 * scores[k][a], 1)
            for k in ("all", "heldout") for a in ("colour", "shape", "motion", "all")}


def by_shape(scores: dict) -> dict:
    """score_clips' clips -> {prompted shape: {"right": read right, "clips": n, "median_fill": fill}}."""
    groups = collections.defaultdict(list)
    for c in scores["clips"]:
        groups[c["intent"]["shape"]].append(c)
    out = {}
    for shape, clips in sorted(groups.items()):
        fills = [c["measured"]["fill"] for c in clips if c["measured"].get("fill") is not None]
        out[shape] = {"right": sum(bool(c["correct"]["shape"]) for c in clips), "clips": len(clips),
                      "median_fill": round(statistics.median(fills), 3) if fills else None}
    return out


@torch.no_grad()
def vae_latent(frames, vae, size: tuple[int, int, int]) -> torch.Tensor:
    """Ground-truth frames uint8 (F, H, W, 3) -> the VAE's latent (C, T, h, w) of `size`."""
    pixels = pipeline.init_pixels(frames, size, vae.temporal_stride, vae.spatial_stride)  # (3, F', H', W')
    pixels = pixels[None].to(next(vae.parameters()).dtype)  # (1, 3, F', H', W')
    return vae.encode(pixels, chunk_frames=pipeline.DECODE_CHUNK_FRAMES)[0]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", default="default", help="DiT checkpoint folder (default: the embedded model)")
    ap.add_argument("--vae", default=None, help="VAE to decode with (default: the checkpoint's)")
    ap.add_argument("--prompts", type=Path, help="prompts JSONL (default: the evaluation set)")
    ap.add_argument("--num", type=int, default=96, help="number of prompts (half held-out)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 2000], help="seed bases, a clip set each")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--res", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--sampler", choices=SAMPLERS)
    ap.add_argument("--latents", type=Path, help="folder to keep / reuse the sampled latents")
    ap.add_argument("--out", type=Path, help="folder to keep the mp4s and their manifest")
    ap.add_argument("--device", default="cpu", help="cpu (the recorded figures), cuda, cuda:N or auto")
    args = ap.parse_args(argv)
    if args.num < 2 or args.frames < 1:
        ap.error("--num must be >= 2 and --frames >= 1")

    rows = load_eval_prompts(args.prompts, args.num)
    pipe = pipeline.load_pipeline(args.dit, args.vae, device=args.device)
    settings = pipeline.sampling_settings(pipe.meta, steps=args.steps, cfg=args.cfg, sampler=args.sampler)
    height, width = args.res
    size = latent_shape(args.frames, height, width, pipe.vae.temporal_stride, pipe.vae.spatial_stride)
    for folder in (args.latents, args.out):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    setup = {"dit": args.dit, "vae": args.vae or pipe.meta["vae"], "steps": settings.steps,
             "cfg": settings.cfg, "sampler": settings.sampler, "frames": args.frames, "res": [height, width]}
    lines, generated, ceiling, manifest = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)

        def clip(latent, name: str, seed: int, caption: str):
            """Decode as generate.py does, write, read back -> (frames, caption) for score_clips."""
            request = VideoRequest(caption, args.frames, height, width, seed, "", folder / name)
            pipeline.decode_to_mp4(latent, request, pipe.vae, 16.0)
            return read_mp4(request.out), caption

        for base in args.seeds:
            requests = [VideoRequest(r["caption"], args.frames, height, width, base + i, "", folder / "x.mp4")
                        for i, r in enumerate(rows)]
            kept = args.latents / f"latents-{base}.pt" if args.latents else None
            if kept is not None and kept.is_file():
                latents = torch.load(kept, weights_only=True)
            else:
                latents = pipeline.sample_latents(pipe, requests, settings, progress=False)
                if kept is not None:
                    torch.save(latents, kept)
            items = [clip(z, f"{base}-{i:04d}.mp4", base + i, r["caption"])
                     for i, (z, r) in enumerate(zip(latents, rows))]
            manifest += [{"path": f"{base}-{i:04d}.mp4", "caption": r["caption"]} for i, r in enumerate(rows)]
            lines.append({"seeds": base, "source": "generated", **setup, **figures(score_clips(items))})
            generated += items
            for i, r in enumerate(rows):
                truth = render_eval_clip(r, base + i, (height, width), args.frames)  # (F, H, W, 3)
                ceiling.append(clip(vae_latent(truth, pipe.vae, size), f"vae-{base}-{i:04d}.mp4", base + i,
                                    r["caption"]))
        if args.out:
            text_rows = "".join(json.dumps(m) + "\n" for m in manifest)
            (args.out / "manifest.jsonl").write_text(text_rows, encoding="utf-8")
    scores, ceiling_scores = score_clips(generated), score_clips(ceiling)
    shapes = by_shape(scores)
    for shape, line in shapes.items():
        print(json.dumps({"shape": shape, **line}))
    lines.append({"seeds": "all", "source": "vae_ceiling", "clips": len(ceiling), "vae": setup["vae"],
                  "frames": args.frames, "res": [height, width], **figures(ceiling_scores),
                  "shapes": by_shape(ceiling_scores)})
    lines.append({"seeds": "all", "source": "generated", "clips": len(generated), **setup, **figures(scores),
                  "shapes": shapes})
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


if __name__ == "__main__":
    main()
