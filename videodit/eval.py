"""Oracle evaluator for the synthetic world: does a generated clip show what its prompt asked for?

It renders nothing. It reads each mp4, finds the one object against the background, and measures

    colour      nearest palette colour of the object's core pixels
    shape       fill ratio of the object's box (circle ~0.785, square ~1, triangle ~0.5) and how much of
                its area lies in the lower half (upright triangle ~0.75 -> asymmetry ~0.5, others ~0)
    motion      the object's centroid path: net displacement and extent, in fractions of the frame
    background  nearest background colour of the clip's median pixel
    blobs       separate foreground regions per frame (median and max over frames): one for a clean clip,
                many for speckle

and compares them with `parse_prompt(prompt)`. Reports accuracy per attribute, all three of colour,
shape and motion right, and the same on the held-out colour-shape-motion combinations.

    python -m videodit.eval --videos OUT/prompts_generated.jsonl      # rows with path + caption/prompt
    python -m videodit.eval --videos DIR        # DIR/*.mp4, prompt in a sidecar .txt or .json
    python -m videodit.eval --vae default --vae-clips world/heldout.jsonl --vae-clips natural/heldout.jsonl

`vae_psnr(vae, clips)` measures a VAE's reconstruction PSNR (dB) on clips; the VAE only needs
`encode(video) -> latent` and `decode(latent, num_frames=F) -> video` on (B, 3, F, H, W) in [-1, 1].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from videodit.mp4 import read_mp4
from videodit.world import BACKGROUND_RGB, PALETTE, heldout_combos, parse_prompt

ATTRIBUTES = ("colour", "shape", "motion", "background")
MIN_CONTRAST = 40.0  # RGB distance from the background below which a frame shows no object
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # BT.601 weights
MIN_LUMA_STEP = 20.0  # object/background brightness difference that luma measures reliably
STILL_EXTENT = 0.05  # centroid moving less than this fraction of the frame: still
MOVE_MIN = 0.10  # net travel (or bounce height) at least this fraction of the frame to count as motion
SHAPE_PROTOTYPES = {"circle": (np.pi / 4, 0.0), "square": (1.0, 0.0), "triangle": (0.5, 0.5)}  # (fill, asym)


def _nearest(rgb: np.ndarray, table: dict) -> str:
    names = list(table)
    dist = np.linalg.norm(np.asarray([table[n] for n in names], np.float32) - rgb, axis=1)
    return names[int(dist.argmin())]


def object_alpha(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft object mask of a one-object clip.

    frames uint8 (F, H, W, 3) -> (alpha (F, H, W) in [0, 1], object rgb (3,), background rgb (3,)).
    alpha is the pixel's position between background and object colour, so edges count fractionally.
    """
    x = frames.astype(np.float32)  # (F, H, W, 3)
    bg = np.median(x[:, ::2, ::2].reshape(-1, 3), axis=0)  # (3,) the object covers < 10% of the pixels
    dist = np.linalg.norm(x - bg, axis=-1)  # (F, H, W)
    peak = float(np.quantile(dist, 0.999))
    if peak < MIN_CONTRAST:
        return np.zeros(dist.shape, np.float32), bg, bg
    core = dist > max(MIN_CONTRAST, 0.7 * peak)
    fg = np.median(x[core], axis=0)  # (3,)
    # Luma is stored at full resolution (chroma at half in yuv420p), so it gives sharper edges when the
    # object and background differ enough in brightness; otherwise project onto the colour difference.
    direction = fg - bg
    luma_step = float(LUMA @ direction)
    if abs(luma_step) >= MIN_LUMA_STEP:
        alpha = ((x - bg) @ LUMA) / luma_step  # (F, H, W)
    else:
        alpha = ((x - bg) @ direction) / float(direction @ direction)  # (F, H, W)
    alpha = np.clip(alpha, 0.0, 1.0)
    alpha[alpha < 0.2] = 0.0  # codec ringing and noise
    return alpha, fg, bg


def shape_features(a: np.ndarray) -> np.ndarray:
    """Alpha (F, H, W) -> (F, 2): per frame, fill ratio of the soft bounding box and lower-minus-upper
    share of the area."""
    area = a.sum(axis=(1, 2))  # (F,)
    col, row = a.max(axis=1), a.max(axis=2)  # (F, W), (F, H)
    box = col.sum(axis=1) * row.sum(axis=1)  # soft width * soft height (F,)
    H = a.shape[1]
    solid = row >= 0.5  # (F, H)
    first = solid.argmax(axis=1)  # (F,)
    last = H - 1 - solid[:, ::-1].argmax(axis=1)
    mid = (first + last + 1) / 2  # box centre row, in pixel-edge units (F,)
    ys = np.arange(H) + 0.5  # (H,)
    weight = np.clip(ys[None, :] - mid[:, None] + 0.5, 0.0, 1.0)  # share of each row below mid (F, H)
    lower = (a.sum(axis=2) * weight).sum(axis=1)  # (F,)
    ok = solid.any(axis=1) & (box > 0)
    safe = np.maximum(area, 1e-6)
    fill = np.where(ok, area / np.maximum(box, 1e-6), 0.0)
    asym = np.where(ok, (2 * lower - area) / safe, 0.0)
    return np.stack([fill, asym], axis=1)  # (F, 2)


def count_blobs(alpha: np.ndarray, min_pixels: int = 4) -> np.ndarray:
    """Alpha (F, H, W) -> (F,) int: separate foreground regions (8-connected, alpha >= 0.5) of at least
    `min_pixels` pixels in each frame."""
    counts = []
    for frame in alpha >= 0.5:
        labels, n = ndimage.label(frame, structure=np.ones((3, 3), bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,) pixels per region
        counts.append(int((sizes >= min_pixels).sum()))
    return np.asarray(counts, np.int64)


def classify_motion(centres: np.ndarray, height: int, width: int) -> str:
    """Centroid path (F, 2) (y, x) in pixels -> left/right/up/down/bouncing/still."""
    if len(centres) < 2:
        return "still"
    p = centres / np.asarray([height, width], np.float32)  # fractions of the frame
    net = p[-1] - p[0]  # (2,)
    extent = p.max(axis=0) - p.min(axis=0)  # (2,)
    if extent.max() < STILL_EXTENT:
        return "still"
    ey, ex = extent
    if ey >= MOVE_MIN and abs(net[0]) < 0.5 * ey and ex < 0.5 * ey:
        return "bouncing"
    if max(abs(net[0]), abs(net[1])) < MOVE_MIN:
        return "still"
    if abs(net[1]) >= abs(net[0]):
        return "right" if net[1] > 0 else "left"
    return "down" if net[0] > 0 else "up"


def object_track(frames: np.ndarray) -> np.ndarray:
    """The object's centroid per frame, uint8 (F, H, W, 3) -> (F, 2) float (y, x) in pixels; NaN where the
    frame shows no object."""
    _, H, W, _ = frames.shape
    alpha, _, _ = object_alpha(frames)
    area = alpha.sum(axis=(1, 2))  # (F,)
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (alpha.sum(axis=2) @ ys) / area
        cx = (alpha.sum(axis=1) @ xs) / area
    track = np.stack([cy, cx], axis=1)
    track[area < 4.0] = np.nan
    return track


def analyse_clip(frames: np.ndarray) -> dict:
    """Measure one clip uint8 (F, H, W, 3) -> {colour, shape, motion, background, ...measurements}.

    Attributes are None when no object is visible.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got shape {tuple(frames.shape)}")
    _, H, W, _ = frames.shape
    alpha, fg, bg = object_alpha(frames)
    background = _nearest(bg, BACKGROUND_RGB)
    area = alpha.sum(axis=(1, 2))  # (F,)
    visible = area >= 4.0  # at least a few pixels of object
    blobs = count_blobs(alpha)  # (F,)
    if not visible.any():
        return {"colour": None, "shape": None, "motion": None, "background": background,
                "visible_frames": 0, "blobs": 0, "max_blobs": int(blobs.max())}
    a = alpha[visible]  # (F', H, W)
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5
    cy = (a.sum(axis=2) @ ys) / area[visible]  # (F',)
    cx = (a.sum(axis=1) @ xs) / area[visible]
    feats = shape_features(a)  # (F', 2)
    fill, asym = np.median(feats, axis=0)
    protos = np.asarray(list(SHAPE_PROTOTYPES.values()))  # (3, 2)
    shape = list(SHAPE_PROTOTYPES)[int(np.linalg.norm(protos - (fill, asym), axis=1).argmin())]
    return {
        "colour": _nearest(fg, PALETTE),
        "shape": shape,
        "motion": classify_motion(np.stack([cy, cx], axis=1), H, W),
        "background": background,
        "visible_frames": int(visible.sum()),
        "blobs": int(np.median(blobs)),
        "max_blobs": int(blobs.max()),
        "fill": round(float(fill), 3),
        "asym": round(float(asym), 3),
        "object_rgb": [round(float(v)) for v in fg],
    }


def _accuracy(results: list[dict]) -> dict:
    out: dict = {"n": len(results)}
    for key in (*ATTRIBUTES, "all"):
        scored = [r["correct"][key] for r in results if r["correct"].get(key) is not None]
        out[key] = round(sum(scored) / len(scored), 4) if scored else None
    return out


def score_clips(items: list[tuple[np.ndarray, str]]) -> dict:
    """Score (frames uint8 (F, H, W, 3), prompt) pairs -> {"all", "heldout", "seen": acc, "clips": [...]}.

    acc = {"n", "colour", "shape", "motion", "background", "all"}; an attribute the prompt does not
    name is not scored, and "all" (colour, shape and motion right) only where all three are named. A
    single frame (an image) shows no motion: its motion is not scored and its "all" is colour and shape.
    """
    held = set(heldout_combos())
    results = []
    for frames, prompt in items:
        intent = parse_prompt(prompt)
        measured = analyse_clip(frames)
        correct = {k: (None if intent[k] is None else measured[k] == intent[k]) for k in ATTRIBUTES}
        still = frames.shape[0] < 2
        if still:
            correct["motion"] = None
        triple = [correct[k] for k in (("colour", "shape") if still else ("colour", "shape", "motion"))]
        correct["all"] = None if None in triple else all(triple)
        combo = (intent["colour"], intent["shape"], intent["motion"])
        results.append({"prompt": prompt, "intent": intent, "measured": measured, "correct": correct,
                        "heldout": combo in held})
    return {
        "all": _accuracy(results),
        "heldout": _accuracy([r for r in results if r["heldout"]]),
        "seen": _accuracy([r for r in results if not r["heldout"]]),
        "clips": results,
    }


def _prompt_beside(video: Path) -> str:
    txt, meta = video.with_suffix(".txt"), video.with_suffix(".json")
    if txt.exists():
        return txt.read_text(encoding="utf-8").strip()
    if meta.exists():
        data = json.loads(meta.read_text(encoding="utf-8"))
        for key in ("prompt", "caption"):
            if key in data:
                return str(data[key])
    raise ValueError(f"no prompt for {video}: expected {txt.name} or {meta.name} with a 'prompt' key")


def list_videos(source: str | Path) -> list[tuple[Path, str]]:
    """A JSONL manifest (rows with `path` and `caption` or `prompt`; relative paths resolve against
    the manifest's folder) or a folder of mp4s with sidecar .txt/.json prompts -> [(path, prompt)]."""
    source = Path(source)
    if source.is_dir():
        videos = sorted(source.rglob("*.mp4"))
        if not videos:
            raise ValueError(f"no .mp4 files under {source}")
        return [(v, _prompt_beside(v)) for v in videos]
    if not source.exists():
        raise ValueError(f"--videos {source} does not exist")
    items = []
    for i, line in enumerate(source.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get("prompt", row.get("caption"))
        if "path" not in row or prompt is None:
            raise ValueError(f"{source}:{i + 1}: rows need 'path' and 'caption' or 'prompt', "
                             f"got {sorted(row)}")
        path = Path(row["path"])
        items.append((path if path.is_absolute() else source.parent / path, str(prompt)))
    return items


def evaluate_videos(source: str | Path) -> dict:
    """Read and score every clip of a manifest or folder (see `list_videos`)."""
    return score_clips([(read_mp4(path), prompt) for path, prompt in list_videos(source)])


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB between two videos in [-1, 1] (peak-to-peak 2)."""
    mse = float(torch.mean((reference.double() - test.double()) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(4.0 / mse)


def _clip_list(clips) -> list:
    if isinstance(clips, (str, Path)):
        return [path for path, _ in list_videos(clips)]
    return list(clips)


@torch.no_grad()
def vae_psnr(vae, clips, max_clips: int | None = None, device=None, dtype=torch.float32) -> float:
    """Mean reconstruction PSNR (dB) of `vae` over clips.

    clips: a manifest/folder (see `list_videos`), or a list of paths or uint8 (F, H, W, 3) arrays.
    Each clip goes through encode -> decode(num_frames=F) as one (1, 3, F, H, W) batch in [-1, 1],
    cropped to a multiple of `vae.spatial_stride` if needed; the decode is clamped to [-1, 1].
    """
    items = _clip_list(clips)[:max_clips]
    if not items:
        raise ValueError("vae_psnr needs at least one clip")
    stride = int(getattr(vae, "spatial_stride", 1))
    scores = []
    for item in items:
        frames = read_mp4(item) if isinstance(item, (str, Path)) else np.asarray(item)
        F, H, W, _ = frames.shape
        frames = frames[:, : H - H % stride, : W - W % stride]
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device, dtype=dtype)
        video = video.permute(3, 0, 1, 2)[None] / 127.5 - 1.0  # (F, H, W, 3) -> (1, 3, F, H, W)
        recon = vae.decode(vae.encode(video), num_frames=F).clamp(-1.0, 1.0)
        scores.append(psnr(video, recon))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Score generated synthetic-world clips against their prompts")
    p.add_argument("--videos", help="JSONL manifest (path + caption/prompt) or folder of mp4 + .txt prompts")
    p.add_argument("--vae", default=None, help="also measure this VAE's PSNR ('default' or a folder)")
    p.add_argument("--vae-clips", action="append", default=[], help="manifest/folder of clips for --vae")
    p.add_argument("--max-clips", type=int, default=None, help="at most this many clips per --vae-clips")
    p.add_argument("--per-clip", action="store_true", help="include every clip's measurements")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    a = p.parse_args(argv)
    if not a.videos and not a.vae:
        p.error("give --videos and/or --vae with --vae-clips")
    report: dict = {}
    if a.videos:
        scores = evaluate_videos(a.videos)
        if not a.per_clip:
            scores.pop("clips")
        report["prompt_following"] = scores
    if a.vae:
        if not a.vae_clips:
            p.error("--vae needs at least one --vae-clips")
        from vae3d.io import load_vae

        vae = load_vae(a.vae).eval()
        report["vae"] = {"name": a.vae, "random_init": bool(getattr(vae, "is_random_init", False)),
                         "psnr_db": {c: round(vae_psnr(vae, c, a.max_clips), 3) for c in a.vae_clips}}
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
