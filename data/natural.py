"""Natural-image clips for VAE training: stills, slow camera pans and zooms over scikit-image's sample photos.

Only images bundled with scikit-image (no download) are used. A fixed set of images is held out: their
clips go to `heldout.jsonl` only, so the VAE's PSNR on them measures photos it never saw.

    python -m data.natural --out data/natural --num 600 --seed 0 [--min-size 48 --max-size 96]

writes `OUT/train/*.mp4` + `OUT/train.jsonl` and `OUT/heldout/*.mp4` + `OUT/heldout.jsonl`; rows have
`path` (relative to the manifest), `caption`, `image`, `mode` (still/pan/zoom), `height`, `width`,
`num_frames`, `fps`, `heldout`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates
from skimage import data as skdata
from skimage.transform import rescale

from data.synthetic import durations, resolutions, write_jsonl
from videodit.mp4 import Mp4Writer

# name -> caption; every one ships inside scikit-image (grayscale ones become grey RGB)
IMAGES = {
    "astronaut": "a portrait of an astronaut in front of a flag",
    "chelsea": "a tabby cat looking at the camera",
    "rocket": "a rocket on its launch pad",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "hubble_deep_field": "distant galaxies in deep space",
    "retina": "a photograph of a human retina",
    "camera": "a black and white photo of a cameraman",
    "moon": "the cratered surface of the moon",
    "grass": "a close-up of grass",
    "gravel": "a close-up of gravel",
    "clock": "a wall clock",
    "page": "a page of printed text",
    "coffee": "a cup of coffee on a saucer",
    "stereo_motorcycle": "a motorcycle in a workshop",
    "brick": "a brick wall",
    "coins": "old coins on a table",
}
HELDOUT_IMAGES = ("coffee", "stereo_motorcycle", "brick", "coins")
MODES = ("still", "pan", "zoom")
MODE_WEIGHTS = (0.3, 0.45, 0.25)
PAN_TRAVEL = (0.1, 0.3)  # pan distance over the clip, fraction of the shorter output side
ZOOM_RATIO = (0.8, 1.25)  # last-frame / first-frame field of view
MARGIN = 1.7  # view size * MARGIN must fit the (rescaled) source for any pan or zoom


def training_images() -> list[str]:
    return [n for n in IMAGES if n not in HELDOUT_IMAGES]


def load_image(name: str) -> np.ndarray:
    """A scikit-image sample photo -> uint8 (H, W, 3)."""
    if name not in IMAGES:
        raise ValueError(f"image must be one of {sorted(IMAGES)}, got {name!r}")
    img = getattr(skdata, name)()
    if isinstance(img, tuple):  # stereo pairs: take the left view
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)  # (H, W) -> (H, W, 3)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def render_camera_clip(
    image: np.ndarray, height: int, width: int, num_frames: int, mode: str, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """A still, pan or zoom over `image` uint8 (Hi, Wi, 3) -> (uint8 (F, H, W, 3), phrase for the caption)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    Hi, Wi, _ = image.shape
    # scale from source to output pixels; log-uniform between "view + margin fills the image" and 1:1
    s_lo = MARGIN * max(height / Hi, width / Wi)
    s = float(math.exp(rng.uniform(math.log(s_lo), math.log(max(s_lo, 1.0)))))
    shift, k1, phrase = np.zeros(2), 1.0, "still shot"
    if mode == "pan":
        angle = float(rng.uniform(0, 2 * math.pi))
        travel = float(rng.uniform(*PAN_TRAVEL)) * min(height, width)
        shift = travel * np.asarray([math.sin(angle), math.cos(angle)])  # (dy, dx) in output pixels
        horizontal = "right" if shift[1] > 0 else "left"
        vertical = "down" if shift[0] > 0 else "up"
        phrase = f"camera panning {horizontal if abs(shift[1]) >= abs(shift[0]) else vertical}"
    elif mode == "zoom":
        k1 = float(rng.uniform(*ZOOM_RATIO))
        phrase = "camera slowly zooming " + ("in" if k1 < 1 else "out")
    # the region of the source this clip needs, in output pixels, then cut and rescale it once
    need = np.asarray([height, width]) * max(1.0, k1) + np.abs(shift) + 4  # (2,)
    src = np.minimum(np.ceil(need / s).astype(int), [Hi, Wi])
    y0 = int(rng.integers(0, Hi - src[0] + 1))
    x0 = int(rng.integers(0, Wi - src[1] + 1))
    region = image[y0 : y0 + src[0], x0 : x0 + src[1]].astype(np.float32)
    region = rescale(region, s, channel_axis=-1, anti_aliasing=s < 1, order=1, preserve_range=True)
    Rh, Rw, _ = region.shape
    u = np.linspace(0.0, 1.0, num_frames)  # (F,)
    k = 1.0 + u * (k1 - 1.0)  # (F,) field of view relative to the first frame
    cy = Rh / 2 - shift[0] / 2 + u * shift[0]  # (F,) view centre in region pixels
    cx = Rw / 2 - shift[1] / 2 + u * shift[1]
    iy = np.arange(height) + 0.5 - height / 2  # (H,)
    ix = np.arange(width) + 0.5 - width / 2  # (W,)
    Y = cy[:, None, None] + iy[None, :, None] * k[:, None, None] - 0.5  # (F, H, 1)
    X = cx[:, None, None] + ix[None, None, :] * k[:, None, None] - 0.5  # (F, 1, W)
    Y, X = np.broadcast_arrays(Y, X)  # (F, H, W) each
    frames = np.stack(
        [map_coordinates(region[..., c], [Y, X], order=1, mode="nearest") for c in range(3)], axis=-1
    )  # (F, H, W, 3)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8), phrase


def render_split(
    out: Path, split: str, names: list[str], num: int, seed: int,
    sizes: list[tuple[int, int]], frame_counts: list[int], fps: float = 8.0,
) -> list[dict]:
    """Render `num` clips cycling through `names` -> manifest rows (paths relative to `out`)."""
    split_id = {"train": 0, "heldout": 1}[split]
    images = {n: load_image(n) for n in names}
    rows = []
    for i in range(num):
        rng = np.random.default_rng([seed, split_id, i, 17])
        name = names[i % len(names)]
        H, W = sizes[int(rng.integers(len(sizes)))]
        F = frame_counts[int(rng.integers(len(frame_counts)))]
        mode = MODES[int(rng.choice(len(MODES), p=MODE_WEIGHTS))]
        frames, phrase = render_camera_clip(images[name], H, W, F, mode, rng)
        rel = f"{split}/{i:06d}.mp4"
        with Mp4Writer(out / rel, fps, H, W) as writer:
            writer.write(frames)
        rows.append({"path": rel, "caption": f"{IMAGES[name]}, {phrase}", "image": name, "mode": mode,
                     "height": H, "width": W, "num_frames": F, "fps": fps, "heldout": split == "heldout"})
    return rows


def render_dataset(
    out: str | Path, num: int, seed: int = 0, num_heldout: int | None = None,
    min_size: int = 48, max_size: int = 96, min_frames: int = 9, max_frames: int = 33, fps: float = 8.0,
) -> dict:
    """Render training clips (training images only) and held-out clips (held-out images only) under `out`."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    num_heldout = max(len(HELDOUT_IMAGES), num // 10) if num_heldout is None else num_heldout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes, frame_counts = resolutions(min_size, max_size), durations(min_frames, max_frames)
    t0 = time.perf_counter()
    train = render_split(out, "train", training_images(), num, seed, sizes, frame_counts, fps)
    held = render_split(out, "heldout", list(HELDOUT_IMAGES), num_heldout, seed, sizes, frame_counts, fps)
    seconds = time.perf_counter() - t0
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", held)
    return {"out": str(out), "train": num, "heldout": num_heldout, "seconds": round(seconds, 2),
            "clips_per_s": round((num + num_heldout) / max(seconds, 1e-9), 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Render natural-image clips (stills, pans, zooms) for the VAE")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, required=True, help="training clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-heldout", type=int, default=None, help="held-out clips (default max(4, num // 10))")
    p.add_argument("--min-size", type=int, default=48)
    p.add_argument("--max-size", type=int, default=96)
    p.add_argument("--min-frames", type=int, default=9)
    p.add_argument("--max-frames", type=int, default=33)
    p.add_argument("--fps", type=float, default=8.0)
    a = p.parse_args(argv)
    print(json.dumps(render_dataset(a.out, a.num, a.seed, a.num_heldout, a.min_size, a.max_size,
                                    a.min_frames, a.max_frames, a.fps)))


if __name__ == "__main__":
    main()
