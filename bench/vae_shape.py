"""VAE shape fidelity: does a reconstructed square stay square when it moves?

    python -m bench.vae_shape [--vae default] [--size 24]

Renders one square per case (no codec; 17 frames of 128x128, side --size px) still and moving 68 px right or
down (4 px a frame, 16 px a latent at temporal stride 4), encodes and decodes it with the VAE, and reads both
with the oracle evaluator. Prints one JSON line per case (fill ratio of ground truth and reconstruction, the
shape read from each) and a summary line with the mean reconstructed fill of still and of moving squares.
The evaluator's square/circle boundary lies near fill 0.89.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from data.synthetic import ClipSpec, render_clip
from vae3d.io import load_vae
from videodit.eval import analyse_clip

CASES = [("red", "black"), ("blue", "navy"), ("yellow", "dark gray"), ("white", "navy"),
         ("purple", "dark gray"), ("cyan", "black")]
PATHS = {"still": ((64.0, 64.0), (64.0, 64.0)), "right": ((64.0, 30.0), (64.0, 98.0)),
         "down": ((30.0, 64.0), (98.0, 64.0))}


def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x), num_frames=x.shape[2])
    return ((rec[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="default")
    ap.add_argument("--size", type=float, default=24.0)
    args = ap.parse_args(argv)
    vae = load_vae(args.vae).eval()
    fills: dict[str, list[float]] = {"still": [], "moving": []}
    right = {"still": 0, "moving": 0}
    for colour, background in CASES:
        for motion, (start, end) in PATHS.items():
            spec = ClipSpec(colour, "square", motion, background, 128, 128, 17, args.size, start, end)
            gt = render_clip(spec)
            a, b = analyse_clip(gt), analyse_clip(reconstruct(vae, gt))
            kind = "still" if motion == "still" else "moving"
            fills[kind].append(b["fill"])
            right[kind] += b["shape"] == "square"
            print(json.dumps({"colour": colour, "background": background, "motion": motion,
                              "fill_gt": a["fill"], "fill_recon": b["fill"], "read_gt": a["shape"],
                              "read_recon": b["shape"]}))
    print(json.dumps({"summary": True, "vae": args.vae, "size_px": args.size,
                      "fill_recon_still": round(float(np.mean(fills["still"])), 3),
                      "fill_recon_moving": round(float(np.mean(fills["moving"])), 3),
                      "squares_read_still": f"{right['still']}/{len(fills['still'])}",
                      "squares_read_moving": f"{right['moving']}/{len(fills['moving'])}"}))


if __name__ == "__main__":
    main()
