"""Tiny clips written with av for the data/trainer tests (no test functions here; helpers only)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np


def clip_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth moving pattern uint8 (F, H, W, 3) that survives H.264 well."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for f in range(num_frames):
        chans = [127 + 100 * np.sin(xx / (7 + 3 * c) + yy / 11 + phase[c] + 0.3 * f) for c in range(3)]
        frames.append(np.stack(chans, -1).clip(0, 255).astype(np.uint8))
    return np.stack(frames)  # (F, H, W, 3)


def write_clip(path: str | Path, num_frames: int = 9, height: int = 32, width: int = 48, fps: int = 8,
               seed: int = 0) -> Path:
    """H.264 mp4 (yuv420p, even sizes) of clip_frames(...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "16"}
        for frame in clip_frames(num_frames, height, width, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_dataset(folder: str | Path, num_clips: int = 4, bad: bool = False, sizes=None) -> Path:
    """A JSONL manifest of `num_clips` tiny clips (varied sizes) plus, if `bad`, one of each bad kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = sizes or [(32, 48), (48, 32), (32, 32), (40, 64)]
    rows = []
    for i in range(num_clips):
        h, w = sizes[i % len(sizes)]
        write_clip(folder / f"clip{i}.mp4", num_frames=9 + 4 * (i % 2), height=h, width=w, seed=i)
        rows.append({"path": f"clip{i}.mp4", "caption": f"clip number {i}"})
    if bad:
        good = (folder / "clip0.mp4").read_bytes()
        (folder / "empty.mp4").write_bytes(b"")
        (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
        (folder / "garbled.mp4").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
        (folder / "notvideo.mp4").write_text("this is a text file, not a video\n")
        for name in ("missing.mp4", "empty.mp4", "truncated.mp4", "garbled.mp4", "notvideo.mp4"):
            rows.append({"path": name, "caption": f"bad {name}"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def tiny_vae(folder: str | Path, latent_channels: int = 4) -> Path:
    """A random-init tiny causal VAE (ts=4, ss=8) saved with vae3d.io.save_vae; returns its folder."""
    import torch

    from vae3d.config import VAEConfig
    from vae3d.io import save_vae
    from vae3d.model import CausalVAE3D

    torch.manual_seed(0)
    cfg = VAEConfig(latent_channels=latent_channels, base_channels=8, patch_size=2, channel_mult=(1, 1, 1))
    return save_vae(CausalVAE3D(cfg), Path(folder))
