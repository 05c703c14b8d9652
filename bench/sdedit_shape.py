"""How much of a ground-truth clip a DiT keeps when it re-denoises it from noise level s (SDEdit).

    python -m bench.sdedit_shape [--dit default] [--strengths 0.3] [--num 96] [--seed-base 1000]

For each of the evaluation prompts (`data.synthetic.load_eval_prompts`), renders the ground truth the
world's sampler draws for it (seed base + i, 17 frames of 128x128), encodes it with the checkpoint's VAE,
noises the latent to the first sampler step at or below sigma s and denoises it under the prompt with the
checkpoint's sampler settings (`data.dit_pairs.draw_latents`), decodes, writes and reads mp4 as
generate.py does, and scores it with `videodit.eval.score_clips`. Strength 1 is plain generation from the
same seeds; the VAE alone (no DiT) is `python -m bench.vae_ceiling`. One JSON line per strength with the
accuracies and the clips read right per prompted shape: where between the clean latent and the sampled
one a shape is lost.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch

import generate
from bench.prompt_following import figures
from data.synthetic import load_eval_prompts, render_eval_clip
from videodit.eval import score_clips
from videodit.mp4 import read_mp4


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", default="default", help="DiT checkpoint folder (default: the embedded model)")
    ap.add_argument("--vae", default=None, help="VAE (default: the checkpoint's)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.3])
    ap.add_argument("--num", type=int, default=96, help="evaluation prompts (half held-out)")
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--steps", type=int)
    args = ap.parse_args(argv)
    if not all(0 < s <= 1 for s in args.strengths):
        ap.error(f"--strengths must be in (0, 1], got {args.strengths}")

    from data.dit_pairs import draw_latents
    from vae3d.io import load_vae
    from videodit.checkpoint import load_dit
    from videodit.config import from_dict
    from videodit.flow import FlowConfig
    from videodit.text_encoder import TextEncoder

    rows = load_eval_prompts(num=args.num)
    dit, meta = load_dit(args.dit)
    dit.eval()
    vae = load_vae(args.vae or meta["vae"]).eval()
    text = TextEncoder(meta["text_encoder"])
    flow_cfg = from_dict(FlowConfig, meta.get("flow") or {}, "meta.flow")
    settings = meta.get("sampling") or {}
    steps = args.steps or int(settings.get("steps", 30))
    cfg, sampler = float(settings.get("cfg", 5.0)), settings.get("sampler", "euler")
    seeds = [args.seed_base + i for i in range(len(rows))]
    clips = [render_eval_clip(r, seed) for seed, r in zip(seeds, rows)]
    captions = [r["caption"] for r in rows]
    records = []
    for s in args.strengths:
        latents = draw_latents(dit, vae, text, flow_cfg, clips, captions, [s] * len(clips), seeds, steps, cfg,
                               sampler)
        items = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, z in enumerate(latents):
                req = generate.GenRequest(captions[i], 17, 128, 128, seeds[i], "", Path(tmp) / f"{i}.mp4")
                generate.decode_to_mp4(z, req, vae, 16.0)
                items.append((read_mp4(req.out), captions[i]))
        scores = score_clips(items)
        per = collections.Counter()
        for c in scores["clips"]:
            per[c["intent"]["shape"], "clips"] += 1
            per[c["intent"]["shape"], "right"] += bool(c["correct"]["shape"])
        shapes = sorted({k for k, _ in per})
        rec = {"bench": "sdedit_shape", "dit": args.dit, "strength": s, "steps": steps, "cfg": cfg,
               "clips": len(items), **figures(scores),
               "shape_right": {k: f"{per[k, 'right']}/{per[k, 'clips']}" for k in shapes}}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


if __name__ == "__main__":
    main()
