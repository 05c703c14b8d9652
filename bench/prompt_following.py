"""Prompt following of a DiT + VAE on the evaluation prompts, read against the VAE's own ceiling.

    python -m bench.prompt_following [--dit default] [--vae V] [--seeds 1000 2000] [--latents DIR]
    python -m bench.prompt_following --matrix          (the shape matrix, about an hour on 2 cores)

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

`--matrix [FxHxW:N ...]` measures one model at every shape: N prompts (cycling through the evaluation set,
a different slice per shape) at F frames of H x W each, generated and ceiling alike, with seed base
`--seeds`' first. One line per shape (`"source": "matrix"`, `"cell": "FxHxW"`) with colour, shape,
motion, all three and held-out all three, each with its 95% (Wilson) interval, the ceiling's figures and
the median count of separate foreground blobs (1 for a clean clip), then the pooled line (`"cell":
"pooled"`) the goals are judged on. Motion is not scored on single frames. The default matrix is MATRIX.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import tempfile
import time
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


MATRIX = ("17x128x128:24", "33x256x448:12", "33x448x256:12", "1x512x512:12", "64x720x1280:3")


def parse_cell(text: str) -> tuple[int, int, int, int]:
    """'33x256x448:12' -> (frames, height, width, prompts)."""
    try:
        shape, num = text.split(":")
        frames, height, width = (int(v) for v in shape.split("x"))
        cell = (frames, height, width, int(num))
    except ValueError:
        raise ValueError(f"matrix cell {text!r} must look like FRAMESxHEIGHTxWIDTH:PROMPTS, "
                         f"e.g. 17x128x128:24") from None
    if min(cell) < 1:
        raise ValueError(f"matrix cell {text!r}: every number must be >= 1")
    return cell


def wilson(right: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of right / n, in percent."""
    if n == 0:
        return None
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1)]


def with_intervals(scores: dict) -> dict:
    """score_clips' result -> percent and 95% interval per attribute, all three, held-out all three."""
    out = {}
    for name, subset, key in (("colour", "all", "colour"), ("shape", "all", "shape"),
                              ("motion", "all", "motion"), ("all", "all", "all"),
                              ("heldout_all", "heldout", "all")):
        held = subset == "heldout"
        marks = [c["correct"][key] for c in scores["clips"]
                 if c["correct"][key] is not None and (c["heldout"] or not held)]
        out[name] = round(100 * sum(marks) / len(marks), 1) if marks else None
        out[f"{name}_ci"] = wilson(sum(marks), len(marks))
        out[f"{name}_n"] = len(marks)
    return out


def blobs(scores: dict) -> float | None:
    counts = [c["measured"].get("blobs") for c in scores["clips"] if c["measured"].get("blobs") is not None]
    return statistics.median(counts) if counts else None


class Runner:
    """Generates and scores prompts at one shape at a time, with one loaded pipeline."""

    def __init__(self, pipe, settings, folder: Path, latents: Path | None):
        self.pipe, self.settings, self.folder, self.latents = pipe, settings, folder, latents
        self.manifest: list[dict] = []

    def clips(self, latents: list, names: list[str], frames: int, height: int, width: int,
              rows: list[dict], base: int) -> list:
        """Decode as generate.py does (one shape: batched), write, read back -> [(frames, caption)] for
        score_clips."""
        requests = [VideoRequest(r["caption"], frames, height, width, base + i, "", self.folder / name)
                    for i, (r, name) in enumerate(zip(rows, names))]
        for group in pipeline.decode_groups(latents, requests, self.pipe.vae):
            pipeline.decode_batch_to_mp4([latents[i] for i in group], [requests[i] for i in group],
                                         self.pipe.vae, 16.0)
        return [(read_mp4(r.out), r.prompt) for r in requests]

    def shape(self, rows: list[dict], frames: int, height: int, width: int, base: int,
              tag: str = "") -> tuple[list, list]:
        """-> (generated items, VAE-ceiling items) for `rows` at one shape, seeds base + i."""
        vae = self.pipe.vae
        size = latent_shape(frames, height, width, vae.temporal_stride, vae.spatial_stride)
        requests = [VideoRequest(r["caption"], frames, height, width, base + i, "", self.folder / "x.mp4")
                    for i, r in enumerate(rows)]
        kept = self.latents / f"latents-{tag}{base}.pt" if self.latents else None
        if kept is not None and kept.is_file():
            latents = torch.load(kept, weights_only=True)
        else:
            latents = pipeline.sample_latents(self.pipe, requests, self.settings, progress=False)
            if kept is not None:
                torch.save(latents, kept)
        names = [f"{tag}{base}-{i:04d}.mp4" for i in range(len(rows))]
        self.manifest += [{"path": name, "caption": r["caption"]} for name, r in zip(names, rows)]
        truths = [vae_latent(render_eval_clip(r, base + i, (height, width), frames), vae, size)
                  for i, r in enumerate(rows)]  # each prompt's ground truth (F, H, W, 3) through the VAE
        return (self.clips(latents, names, frames, height, width, rows, base),
                self.clips(truths, [f"vae-{n}" for n in names], frames, height, width, rows, base))


def run_matrix(runner: Runner, rows: list[dict], cells: list[tuple[int, int, int, int]], base: int,
               setup: dict) -> list[dict]:
    """One line per shape and the pooled line (see the module docstring)."""
    lines, pooled, pooled_ceiling, offset = [], [], [], 0
    for frames, height, width, num in cells:
        picked = [rows[(offset + k) % len(rows)] for k in range(num)]
        offset += num
        t0 = time.time()
        generated, ceiling = runner.shape(picked, frames, height, width, base, f"{frames}x{height}x{width}-")
        scores, ceiling_scores = score_clips(generated), score_clips(ceiling)
        pooled += generated
        pooled_ceiling += ceiling
        line = {"source": "matrix", "cell": f"{frames}x{height}x{width}", "clips": num, **setup,
                **with_intervals(scores), "blobs_median": blobs(scores),
                "ceiling": {k: v for k, v in with_intervals(ceiling_scores).items() if not k.endswith("_n")},
                "seconds": round(time.time() - t0, 1)}
        print(json.dumps(line), flush=True)
        lines.append(line)
    scores = score_clips(pooled)
    line = {"source": "matrix", "cell": "pooled", "clips": len(pooled), **setup, **with_intervals(scores),
            "blobs_median": blobs(scores),
            "ceiling": {k: v for k, v in with_intervals(score_clips(pooled_ceiling)).items()
                        if not k.endswith("_n")}}
    print(json.dumps(line), flush=True)
    return lines + [line]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit", default="default", help="DiT checkpoint folder (default: the embedded model)")
    ap.add_argument("--vae", default=None, help="VAE to decode with (default: the checkpoint's)")
    ap.add_argument("--prompts", type=Path, help="prompts JSONL (default: the evaluation set)")
    ap.add_argument("--num", type=int, default=96, help="number of prompts (half held-out)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 2000], help="seed bases, a clip set each")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--res", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    ap.add_argument("--matrix", nargs="*", metavar="FxHxW:N",
                    help=f"measure a matrix of shapes instead (no value: {' '.join(MATRIX)})")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--sampler", choices=SAMPLERS)
    ap.add_argument("--latents", type=Path, help="folder to keep / reuse the sampled latents")
    ap.add_argument("--out", type=Path, help="folder to keep the mp4s and their manifest")
    ap.add_argument("--device", default="cpu", help="cpu (the recorded figures), cuda, cuda:N or auto")
    args = ap.parse_args(argv)
    if args.num < 2 or args.frames < 1:
        ap.error("--num must be >= 2 and --frames >= 1")
    try:
        cells = None if args.matrix is None else [parse_cell(c) for c in (args.matrix or MATRIX)]
    except ValueError as e:
        ap.error(str(e))

    rows = load_eval_prompts(args.prompts, args.num)
    pipe = pipeline.load_pipeline(args.dit, args.vae, device=args.device)
    settings = pipeline.sampling_settings(pipe.meta, steps=args.steps, cfg=args.cfg, sampler=args.sampler)
    for folder in (args.latents, args.out):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    setup = {"dit": args.dit, "vae": args.vae or pipe.meta["vae"], "steps": settings.steps,
             "cfg": settings.cfg, "sampler": settings.sampler}
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(pipe, settings, args.out or Path(tmp), args.latents)
        if cells is not None:
            lines = run_matrix(runner, rows, cells, args.seeds[0], setup)
        else:
            lines = run_single(runner, rows, args, setup)
        if args.out:
            text_rows = "".join(json.dumps(m) + "\n" for m in runner.manifest)
            (args.out / "manifest.jsonl").write_text(text_rows, encoding="utf-8")
    return lines


def run_single(runner: Runner, rows: list[dict], args, setup: dict) -> list[dict]:
    """The evaluation prompts at one shape, a clip set per seed base, read against the VAE ceiling."""
    height, width = args.res
    setup = {**setup, "frames": args.frames, "res": [height, width]}
    lines, generated, ceiling = [], [], []
    for base in args.seeds:
        items, truth = runner.shape(rows, args.frames, height, width, base)
        lines.append({"seeds": base, "source": "generated", **setup, **figures(score_clips(items))})
        generated += items
        ceiling += truth
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
