"""Conditioning tasks on the synthetic world: image-to-video, extension, first and last frame, as
generate.py runs them.

    python -m bench.conditioning [--dit CKPT] [--num 24] [--frames 33] [--res 128 128] [--seed 1000]
                                 [--tasks i2v extend first_last]

For each of the first `num` evaluation prompts (`data.synthetic.load_eval_prompts`, half on held-out
combinations), renders its ground truth (`--frames` frames, seed + i) and asks the checkpoint, all
requests packed together through `videodit.pipeline` as `generate.py` would:

    i2v     the clip's first frame as `--image`, with the prompt
    extend  the clip's first half as `--extend`, continued to `--frames` with the prompt
    first_last  the clip's first frame as `--image` and its last as `--last-image`, with the prompt

and scores the mp4s it writes (`videodit.eval`):

    i2v     kept_psnr: PSNR (dB) of the output's first frame against the given image, beside vae_psnr, the
            VAE's own reconstruction of it written to an mp4 the same way (goal: within 1 dB); colour,
            shape kept; motion as prompted
    extend  kept_psnr / vae_psnr likewise over the kept frames; continuation: the frames after the kept ones
            move as prompted and keep the colour; seam: the object's centroid step across the boundary is
            at most 2x the clip's median step per frame (a still object: 2x max(median, 1 px))
    first_last  kept_psnr / vae_psnr of the first frame; end: the object's centroid in the output's last
            frame is within 8% of the frame diagonal of its centroid in the given last image

`--tasks` defaults to those the checkpoint was trained for. One JSON line per task, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.synthetic import load_eval_prompts, render_eval_clip
from vae3d.atomic import write_text
from videodit import pipeline
from videodit.eval import analyse_clip, object_track
from videodit.mp4 import read_mp4, write_mp4
from videodit.video_reader import read_conditioning
from videodit.video_request import VideoRequest, latent_shape

FPS = 8.0
TASKS = ("i2v", "extend", "first_last")
END_TOLERANCE = 0.08  # of the frame diagonal


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@torch.no_grad()
def vae_round_trip(frames: np.ndarray, request: VideoRequest, pipe) -> np.ndarray:
    """What the kept frames come back as: the conditioning prefix the pipeline makes of `frames`, decoded,
    cropped and written to an mp4 like the output (so both went through the same H.264 encoder), read back
    -> uint8 (k_f, H, W, 3)."""
    vae = pipe.vae
    size = latent_shape(request.frames, request.height, request.width, vae.temporal_stride,
                        vae.spatial_stride)
    prefix = pipeline.conditioning_prefix(frames, size, pipe, "bench")  # (C, k, h, w)
    kept = 1 + (prefix.shape[1] - 1) * vae.temporal_stride
    recon = replace(request, frames=kept, out=request.out.with_name(f"vae-{request.out.name}"))
    pipeline.decode_to_mp4(prefix, recon, vae, FPS)
    return read_mp4(recon.out)


def seam_ok(frames: np.ndarray, boundary: int) -> bool | None:
    """Centroid step from frame boundary - 1 to boundary <= 2x the clip's median step (floor 1 px)."""
    track = object_track(frames)
    steps = np.linalg.norm(np.diff(track, axis=0), axis=1)  # (F - 1,)
    if boundary < 1 or boundary >= len(track) or not np.isfinite(steps[boundary - 1]):
        return False
    median = float(np.nanmedian(steps)) if np.isfinite(steps).any() else 0.0
    return bool(steps[boundary - 1] <= 2 * max(median, 1.0))


def end_ok(out: np.ndarray, last: np.ndarray) -> bool:
    """The object's centroid in the output's last frame lies within END_TOLERANCE of the frame diagonal of
    its centroid in the given last image (False where either frame shows no object)."""
    got, want = object_track(out[-1:])[0], object_track(last[None])[0]
    H, W = last.shape[:2]
    return bool(np.isfinite(got).all() and np.isfinite(want).all()
                and np.linalg.norm(got - want) <= END_TOLERANCE * np.hypot(H, W))


def given_of(request: VideoRequest) -> dict:
    return {k: getattr(request, k) for k in ("image", "extend", "last_image") if getattr(request, k)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", default="default", help="DiT checkpoint folder (default: the embedded model)")
    ap.add_argument("--num", type=int, default=24, help="evaluation prompts (half held-out)")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--res", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    ap.add_argument("--seed", type=int, default=1000, help="seed base: prompt i renders and samples seed + i")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, help="default: those the checkpoint was trained for")
    ap.add_argument("--out", type=Path, help="keep the inputs and mp4s here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.num < 1 or args.frames < 9:
        ap.error("--num must be >= 1 and --frames >= 9 (the first half must span a latent frame)")
    rows = load_eval_prompts(None, max(args.num, 2))[: args.num]
    pipe = pipeline.load_pipeline(args.dit, device=args.device)
    tasks = args.tasks or [t for t in TASKS if t in pipe.meta.get("tasks", [])]
    if not tasks:
        ap.error(f"--dit {args.dit!r} was trained for none of {', '.join(TASKS)}; name --tasks to measure "
                 f"them anyway")
    settings = pipeline.sampling_settings(pipe.meta, steps=args.steps)
    height, width = args.res
    t0 = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch) if args.out is None else args.out
        tmp.mkdir(parents=True, exist_ok=True)
        requests, jobs, truths = [], [], []  # jobs: (task, prompt index) of each request
        for i, row in enumerate(rows):
            truth = render_eval_clip(row, args.seed + i, (height, width), args.frames)  # (F, H, W, 3)
            truths.append(truth)
            image, clip, last = tmp / f"first{i}.png", tmp / f"half{i}.mp4", tmp / f"last{i}.png"
            Image.fromarray(truth[0]).save(image)
            Image.fromarray(truth[-1]).save(last)
            write_mp4(clip, truth[: args.frames // 2 + 1], fps=FPS)
            common = (row["caption"], args.frames, height, width, args.seed + i, "")
            given = {"i2v": {"image": image}, "extend": {"extend": clip},
                     "first_last": {"image": image, "last_image": last}}
            for task in tasks:
                requests.append(VideoRequest(*common, tmp / f"{task}{i}.mp4", **given[task]))
                jobs.append((task, i))
        conds = {j: read_conditioning(r.image, r.extend, r.frames, FPS) for j, r in enumerate(requests)}
        lasts = {j: read_conditioning(r.last_image, None, r.frames, FPS) for j, r in enumerate(requests)
                 if r.last_image is not None}
        pipeline.generate(pipe, requests, settings, FPS, conds=conds, progress=False, lasts=lasts)
        if args.out is not None:  # what each mp4 was asked for, for docs/make_samples.py
            write_text(args.out / "manifest.jsonl", "".join(
                json.dumps({"task": task, "path": requests[j].out.name, "caption": rows[i]["caption"],
                            **{k: Path(v).name for k, v in given_of(requests[j]).items()}}) + "\n"
                for j, (task, i) in enumerate(jobs)))
        marks = {task: [] for task in tasks}
        for j, (task, i) in enumerate(jobs):
            row, request = rows[i], requests[j]
            out = read_mp4(request.out)
            given = conds[j]
            recon = vae_round_trip(given, request, pipe)
            k = len(recon)
            m = {"kept_psnr": psnr(out[:k], given[:k]), "vae_psnr": psnr(recon, given[:k])}
            if task in ("i2v", "first_last"):
                got = analyse_clip(out)
                m.update(colour=got["colour"] == row["colour"], shape=got["shape"] == row["shape"],
                         motion=got["motion"] == row["motion"])
            if task == "first_last":
                m.update(end=end_ok(out, truths[i][-1]))
            elif task == "extend":
                rest = analyse_clip(out[k:])
                m.update(continues=rest["motion"] == row["motion"] and rest["colour"] == row["colour"],
                         seam=seam_ok(out, k))
            marks[task].append(m)
    lines = []
    for task, ms in marks.items():
        line = {"bench": "conditioning", "task": task, "dit": args.dit, "clips": len(ms),
                "frames": args.frames, "res": [height, width], "steps": settings.steps,
                "kept_psnr": round(float(np.mean([m["kept_psnr"] for m in ms])), 2),
                "vae_psnr": round(float(np.mean([m["vae_psnr"] for m in ms])), 2)}
        for key in ("colour", "shape", "motion", "continues", "seam", "end"):
            if key in ms[0]:
                line[key] = round(100 * sum(bool(m[key]) for m in ms) / len(ms), 1)
        print(json.dumps(line), flush=True)
        lines.append(line)
    summary = {"bench": "conditioning", "summary": True, "seconds": round(time.time() - t0, 1),
               "tasks": tasks, "trained_for": pipe.meta.get("tasks", ["t2v"])}
    print(json.dumps(summary), flush=True)
    return lines + [summary]


if __name__ == "__main__":
    main()
