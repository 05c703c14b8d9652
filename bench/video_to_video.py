"""Video-to-video (`generate.py --init-video ... --strength S`) on the synthetic world: recolouring.

    python -m bench.video_to_video [--num 48] [--strengths 0.4 0.6 0.8 1.0] [--ckpt default]

For each of the first `num` evaluation prompts (`data.synthetic.load_eval_prompts`, the benchmarks' set),
renders its ground truth (seed 1000 + i, 17 frames of 128x128, written as mp4) and asks, starting from
that clip, for the same shape, motion and background in another colour (the next one in
`videodit.world.COLOURS`, a fresh caption from `make_caption`). Every strength runs through
`videodit.pipeline` as `generate.py --prompts-file` does (all requests packed, the init videos read back
from their mp4s). Strength 1 ignores the clip: plain text-to-video of the same captions, the baseline, in
the same run.

Scored by `videodit.eval.analyse_clip`: `new_colour` = the asked colour, `kept_shape` / `kept_motion` /
`kept_background` = the source clip's, `all` = all four. One JSON line per strength.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from data.synthetic import load_eval_prompts, render_eval_clip
from videodit import pipeline
from videodit.eval import analyse_clip
from videodit.mp4 import read_mp4, write_mp4
from videodit.video_reader import first_frames
from videodit.video_request import VideoRequest
from videodit.world import COLOURS, make_caption


def recolour_requests(rows: list[dict], folder: Path) -> list[dict]:
    """Render each row's ground truth into `folder` -> [{"init_video", "caption", "source", "target"}]."""
    out = []
    rng = np.random.default_rng(77)
    for i, row in enumerate(rows):
        attrs = {k: row[k] for k in ("colour", "shape", "motion", "background")}
        path = folder / f"src{i:03d}.mp4"
        write_mp4(path, render_eval_clip(attrs, 1000 + i), fps=8)
        target = dict(attrs, colour=COLOURS[(COLOURS.index(attrs["colour"]) + 1) % len(COLOURS)])
        out.append({"init_video": str(path), "caption": make_caption(target, rng), "source": attrs,
                    "target": target})
    return out


def score(requests: list[dict], folder: Path) -> dict:
    counts = dict.fromkeys(("new_colour", "kept_shape", "kept_motion", "kept_background", "all"), 0)
    for i, req in enumerate(requests):
        got = analyse_clip(read_mp4(folder / f"{i:04d}.mp4"))
        right = {"new_colour": got["colour"] == req["target"]["colour"],
                 "kept_shape": got["shape"] == req["source"]["shape"],
                 "kept_motion": got["motion"] == req["source"]["motion"],
                 "kept_background": got["background"] == req["source"]["background"]}
        right["all"] = all(right.values())
        for k, v in right.items():
            counts[k] += int(v)
    return {k: round(100 * v / len(requests), 1) for k, v in counts.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=48, help="evaluation prompts used (half held-out at 96)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0])
    ap.add_argument("--ckpt", default="default")
    ap.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's)")
    ap.add_argument("--device", default="cpu", help="cpu (the recorded figures), cuda, cuda:N or auto")
    args = ap.parse_args(argv)
    if not all(0 < s <= 1 for s in args.strengths):
        ap.error(f"--strengths must be in (0, 1], got {args.strengths}")
    rows = load_eval_prompts()[: args.num]
    pipe = pipeline.load_pipeline(args.ckpt, device=args.device)
    settings = pipeline.sampling_settings(pipe.meta, steps=args.steps)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        requests = recolour_requests(rows, tmp)
        for s in args.strengths:
            out = tmp / f"out-{s}"
            videos = [VideoRequest(r["caption"], 17, 128, 128, 1000 + i, "", out / f"{i:04d}.mp4",
                                   Path(r["init_video"]) if s < 1 else None, s)
                      for i, r in enumerate(requests)]
            t0 = time.time()
            inits = {i: first_frames(v.init_video, v.frames, str(v.out))
                     for i, v in enumerate(videos) if v.init_video is not None}
            pipeline.generate(pipe, videos, settings, fps=8.0, inits=inits, progress=False)
            rec = {"bench": "video_to_video", "ckpt": args.ckpt, "strength": s, "clips": len(requests),
                   **score(requests, out), "seconds": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            records.append(rec)
    return records


if __name__ == "__main__":
    main()
