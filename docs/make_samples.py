"""Rebuild docs/samples.png: frames 0, 8 and 16 of the first six evaluation clips, each under its prompt.

    python -m bench.prompt_following --seeds 1000 --out runs/pf && python docs/make_samples.py runs/pf
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from videodit.mp4 import read_mp4

folder = Path(sys.argv[1])
rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()][:6]
parts = []
for row in rows:
    frames = read_mp4(folder / row["path"])
    strip = np.concatenate([frames[i] for i in (0, 8, 16)], axis=1)  # (H, 3W, 3)
    label = Image.new("RGB", (strip.shape[1], 14), "white")
    ImageDraw.Draw(label).text((2, 1), row["caption"], fill="black")
    parts += [np.asarray(label), strip]
Image.fromarray(np.concatenate(parts, axis=0)).save(Path(__file__).parent / "samples.png")
