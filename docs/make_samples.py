"""Rebuild docs/samples.png: the embedded default at every shape of the matrix and at each conditioning task.

    python -m bench.prompt_following --matrix --out runs/pf_matrix
    python -m bench.conditioning --out runs/cond
    python docs/make_samples.py runs/pf_matrix runs/cond

A row per shape (the first clip of each matrix cell: its first, middle and last frame) and per task (the
given frames, then the output's), each under its prompt, every frame scaled to ROW pixels high.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from videodit.mp4 import read_mp4

ROW = 120  # pixels: the height every frame is scaled to
GAP = 4


def scaled(frame: np.ndarray) -> Image.Image:
    h, w = frame.shape[:2]
    return Image.fromarray(frame).resize((max(1, round(w * ROW / h)), ROW), Image.BICUBIC)


def row(label: str, frames: list[np.ndarray]) -> Image.Image:
    pictures = [scaled(f) for f in frames]
    width = sum(p.width for p in pictures) + GAP * (len(pictures) - 1)
    out = Image.new("RGB", (max(width, 8 * len(label)), ROW + 16), "white")
    ImageDraw.Draw(out).text((2, 1), label, fill="black")
    x = 0
    for p in pictures:
        out.paste(p, (x, 16))
        x += p.width + GAP
    return out


def ends(video: np.ndarray) -> list[np.ndarray]:
    return [video[i] for i in sorted({0, len(video) // 2, len(video) - 1})]


def shape_rows(folder: Path) -> list[Image.Image]:
    captions = {r["path"]: r["caption"] for r in map(json.loads, (folder / "manifest.jsonl").open())}
    rows, seen = [], set()
    for name in captions:  # "<F>x<H>x<W>-<seed base>-<i>.mp4", in matrix order; the first clip of each cell
        cell = name.split("-")[0]
        if cell in seen:
            continue
        seen.add(cell)
        rows.append(row(f"{cell}: {captions[name]}", ends(read_mp4(folder / name))))
    return rows


def task_rows(folder: Path) -> list[Image.Image]:
    rows, seen = [], set()
    for r in map(json.loads, (folder / "manifest.jsonl").open()):
        if r["task"] in seen:
            continue
        seen.add(r["task"])
        out = read_mp4(folder / r["path"])
        if r["task"] == "extend":
            given = read_mp4(folder / r["extend"])
            label, frames = "extend (given: first half; then the output's seam and end)", [
                given[0], given[-1], out[len(given)], out[-1]]
        else:
            given = [np.asarray(Image.open(folder / r["image"]).convert("RGB"))]
            if "last_image" in r:
                given.append(np.asarray(Image.open(folder / r["last_image"]).convert("RGB")))
            which = " and ".join(["first", "last"][: len(given)])
            label = f"{r['task']} (given: {which} frame; then the output)"
            frames = [*given, *ends(out)]
        rows.append(row(f"{label}: {r['caption']}", frames))
    return rows


parts = shape_rows(Path(sys.argv[1])) + (task_rows(Path(sys.argv[2])) if len(sys.argv) > 2 else [])
sheet = Image.new("RGB", (max(p.width for p in parts), sum(p.height + GAP for p in parts)), "white")
y = 0
for p in parts:
    sheet.paste(p, (0, y))
    y += p.height + GAP
sheet.save(Path(__file__).parent / "samples.png")
