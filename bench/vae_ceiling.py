"""The VAE's ceiling on prompt following: what the oracle evaluator reads from ground truth passed through it.

    python -m bench.vae_ceiling [--vae default] [--prompts P.jsonl] [--num 96] [--seeds 1000 2000]

For each prompt ({"caption", colour, shape, motion, background, heldout} a line, as `data.synthetic`
writes; the first --num/2 held-out and first --num/2 other lines, the evaluation's choice; default:
the README's evaluation set, `data.synthetic.load_eval_prompts`) and each seed base, renders the
prompt's ground truth with the world's own sampler (17 frames, 128x128, rng seed base + line index),
encodes and decodes it with the VAE, writes and reads it back as mp4 (the codec generated clips go
through), and scores ground truth and
reconstruction with `videodit.eval.score_clips`. A DiT whose latents matched the VAE's exactly would
score the reconstruction's figures, so they bound what a generator on this VAE can reach. Prints one
JSON line per (shape, motion) with how many reconstructions read the right shape, then one summary line
per source (ground truth, VAE).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

from bench.prompt_following import figures
from bench.vae_shape import reconstruct
from data.synthetic import load_eval_prompts, render_eval_clip
from vae3d.io import load_vae
from videodit.eval import score_clips
from videodit.mp4 import read_mp4, write_mp4


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="default")
    ap.add_argument("--prompts", type=Path, help="prompts JSONL (default: the README's evaluation set)")
    ap.add_argument("--num", type=int, default=96, help="number of prompts (half held-out)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000], help="seed bases, one clip set each")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--res", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    args = ap.parse_args(argv)
    rows = load_eval_prompts(args.prompts, args.num)
    vae = load_vae(args.vae).eval()
    gt, rec = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for base in args.seeds:
            for i, r in enumerate(rows):
                frames = render_eval_clip(r, base + i, tuple(args.res), args.frames)  # (F, H, W, 3) uint8
                for clip, out in ((frames, gt), (reconstruct(vae, frames), rec)):
                    path = f"{tmp}/{len(gt) + len(rec)}.mp4"
                    write_mp4(path, clip, fps=16)
                    out.append((read_mp4(path), r["caption"]))
    results = {name: score_clips(items) for name, items in (("ground_truth", gt), ("vae", rec))}
    groups = collections.defaultdict(lambda: [0, 0])
    for c in results["vae"]["clips"]:
        g = groups[(c["intent"]["shape"], c["intent"]["motion"])]
        g[0] += bool(c["correct"]["shape"])
        g[1] += 1
    for (shape, motion), (right, total) in sorted(groups.items()):
        print(json.dumps({"shape": shape, "motion": motion, "vae_shape_right": right, "clips": total}))
    for name, s in results.items():
        print(json.dumps({"source": name, "vae": args.vae, "clips": len(s["clips"]), **figures(s)}))


if __name__ == "__main__":
    main()
