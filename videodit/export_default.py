"""Ship a trained DiT + VAE as the package's embedded default (`videodit/default/`, `vae3d/default/`).

    python -m videodit.export_default --dit runs/default/dit_3/ema --vae runs/default/vae_4/final \
        --steps 32 --cfg 5 --sampler euler

Weights are stored in float16 (half the bytes; they load into float32 models), except the VAE's latent
shift/scale buffers. The DiT's meta is rewritten to point at the shipped VAE and the default text
encoder, and records the recommended sampling settings that `generate.py` uses when its flags are unset.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from vae3d.io import DEFAULT_DIR as VAE_DEFAULT_DIR
from vae3d.io import load_vae, save_vae
from videodit.checkpoint import DEFAULT_DIR as DIT_DEFAULT_DIR
from videodit.checkpoint import load_dit, save_dit

KEEP_FP32 = ("latent_shift", "latent_scale")


def _half(model: torch.nn.Module) -> torch.nn.Module:
    """Cast floating parameters and buffers to float16 in place, keeping KEEP_FP32 buffers."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not name.endswith(KEEP_FP32):
            tensor.data = tensor.data.half()
    return model


def export_default(dit_path: str | Path, vae_path: str | Path, sampling: dict,
                   dit_out: Path = DIT_DEFAULT_DIR, vae_out: Path = VAE_DEFAULT_DIR) -> tuple[Path, Path]:
    vae = load_vae(str(vae_path))
    if getattr(vae, "is_random_init", False) or not hasattr(vae, "config"):
        raise ValueError(f"{str(vae_path)!r} is not a trained CausalVAE3D folder")
    dit, meta = load_dit(dit_path)
    if dit.config.in_channels != vae.latent_channels:
        raise ValueError(f"DiT in_channels {dit.config.in_channels} != VAE latent channels "
                         f"{vae.latent_channels}")
    meta = {**meta, "vae": "default", "text_encoder": "default", "random_init": False, "sampling": sampling}
    with tempfile.TemporaryDirectory(dir=dit_out.parent) as tmp:
        _into(save_vae(_half(vae), Path(tmp) / "vae"), vae_out)
        _into(save_dit(_half(dit), Path(tmp) / "dit", meta), dit_out)
    return dit_out, vae_out


def _into(written: Path, package_folder: Path) -> None:
    """Move each file of a saved model folder into a package folder (a plain folder that git and the wheel
    track, so not the symlink `save_dit`/`save_vae` make), one `os.replace` per file."""
    package_folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(written.iterdir()):
        os.replace(f, package_folder / f.name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dit", required=True, help="DiT checkpoint folder (train_video.py's <out>/ema)")
    p.add_argument("--vae", required=True, help="VAE folder (train_vae.py's <out>/final)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--cfg-interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="noise levels (sigma) between which guidance applies (generate.py --cfg-interval)")
    p.add_argument("--skip-guidance", type=float, default=0.0, help="generate.py --skip-guidance (0 = off)")
    p.add_argument("--skip-blocks", type=int, nargs="*", default=[], help="generate.py --skip-blocks")
    args = p.parse_args(argv)
    if args.skip_guidance < 0 or (args.skip_guidance > 0 and not args.skip_blocks):
        p.error("--skip-guidance must be >= 0, and > 0 needs --skip-blocks")
    lo, hi = args.cfg_interval
    if not (0.0 <= lo <= hi <= 1.0):
        p.error(f"--cfg-interval must satisfy 0 <= LO <= HI <= 1, got {lo} {hi}")
    sampling = {"steps": args.steps, "cfg": args.cfg, "sampler": args.sampler, "cfg_interval": [lo, hi],
                "skip_guidance": args.skip_guidance, "skip_blocks": list(args.skip_blocks)}
    dit_out, vae_out = export_default(args.dit, args.vae, sampling)
    size = sum(f.stat().st_size for d in (dit_out, vae_out) for f in d.iterdir())
    print(f"wrote {dit_out} and {vae_out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
