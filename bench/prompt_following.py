"""Prompt following of a DiT + VAE on the evaluation prompts, as the README's figures are measured.

    python -m bench.prompt_following [--dit default] [--vae V] [--seeds 1000 2000] [--latents DIR]

For each seed base and each of the evaluation's prompts (`data.synthetic.load_eval_prompts`: 96, half on
held-out combinations; line i gets seed base + i, as `generate.py --prompts-file --seed BASE` would give
it), samples 17 frames of 128x128 with the checkpoint's sampler settings (or --steps / --cfg / --sampler),
all requests of a seed base packed into shared forward passes, decodes and writes each clip as mp4 the
way `generate.py` does, reads it back and scores it with `videodit.eval.score_clips`.

`--latents DIR` keeps the sampled latents (DIR/latents-BASE.pt) and reuses them when present, so two VAEs
can be compared on exactly the same DiT output. `--out DIR` keeps the mp4s and a manifest for
`python -m videodit.eval --videos DIR/manifest.jsonl`. Prints one JSON line per prompted shape (clips
read right, their median fill) and one summary line per seed base and for all of them.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

import torch

import generate
from data.synthetic import load_eval_prompts
from videodit.eval import score_clips
from videodit.mp4 import read_mp4


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
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", default="default", help="DiT checkpoint folder (default: the embedded model)")
    ap.add_argument("--vae", default=None, help="VAE to decode with (default: the checkpoint's)")
    ap.add_argument("--prompts", type=Path, help="prompts JSONL (default: the README's evaluation set)")
    ap.add_argument("--num", type=int, default=96, help="number of prompts (half held-out)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 2000], help="seed bases, a clip set each")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--res", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--sampler", choices=generate.SAMPLERS)
    ap.add_argument("--latents", type=Path, help="folder to keep / reuse the sampled latents")
    ap.add_argument("--out", type=Path, help="folder to keep the mp4s and their manifest")
    args = ap.parse_args(argv)
    if args.num < 2 or args.frames < 1:
        ap.error("--num must be >= 2 and --frames >= 1")

    from vae3d.io import load_vae
    from videodit.checkpoint import load_dit
    from videodit.config import from_dict
    from videodit.flow import FlowConfig
    from videodit.sampling import Request, sample
    from videodit.text_encoder import TextEncoder

    rows = load_eval_prompts(args.prompts, args.num)
    dit, meta = load_dit(args.dit)
    dit.eval()
    vae = load_vae(args.vae or meta["vae"]).eval()
    settings = meta.get("sampling") or {}
    steps = args.steps or int(settings.get("steps", 30))
    cfg = args.cfg or float(settings.get("cfg", 5.0))
    sampler = args.sampler or settings.get("sampler", "euler")
    flow_cfg = from_dict(FlowConfig, meta.get("flow") or {}, "meta.flow")
    text = TextEncoder(meta["text_encoder"])
    states, _ = text.encode([r["caption"] for r in rows])
    height, width = args.res
    size = generate.latent_shape(args.frames, height, width, vae.temporal_stride, vae.spatial_stride)
    if args.latents:
        args.latents.mkdir(parents=True, exist_ok=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    setup = {"dit": args.dit, "vae": args.vae or meta["vae"], "steps": steps, "cfg": cfg, "sampler": sampler,
             "frames": args.frames, "res": [height, width]}
    lines, everything, manifest = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        for base in args.seeds:
            cached = args.latents / f"latents-{base}.pt" if args.latents else None
            if cached is not None and cached.is_file():
                latents = torch.load(cached, weights_only=True)
            else:
                reqs = [Request(size, states[i], seed=base + i) for i in range(len(rows))]
                latents = sample(dit, reqs, steps=steps, sampler=sampler, guidance=cfg, flow_cfg=flow_cfg,
                                 token_budget=generate.TOKEN_BUDGET, progress=False)
                if cached is not None:
                    torch.save(latents, cached)
            items = []
            for i, (z, r) in enumerate(zip(latents, rows)):
                out = folder / f"{base}-{i:04d}.mp4"
                req = generate.GenRequest(r["caption"], args.frames, height, width, base + i, "", out)
                generate.decode_to_mp4(z, req, vae, 16.0)
                items.append((read_mp4(out), r["caption"]))
                manifest.append({"path": out.name, "caption": r["caption"]})
            scores = score_clips(items)
            everything += items
            lines.append({"seeds": base, **setup, **figures(scores)})
        if args.out:
            text_rows = "".join(json.dumps(m) + "\n" for m in manifest)
            (args.out / "manifest.jsonl").write_text(text_rows, encoding="utf-8")
        scores = score_clips(everything)
    shapes = by_shape(scores)
    for shape, line in shapes.items():
        print(json.dumps({"shape": shape, **line}))
    lines.append({"seeds": "all", "clips": len(everything), **setup, **figures(scores), "shapes": shapes})
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


if __name__ == "__main__":
    main()
