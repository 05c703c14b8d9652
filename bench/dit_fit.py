"""Can the DiT fit a few clips? Fine-tune it on N training clips and score it on their own captions.

    python -m bench.dit_fit --manifest runs/world_dit2/train.jsonl --num 12 --steps 3000 --out runs/fitb12

Takes the first --num rows of the manifest at --res with at least --frames frames (round-robin over the
shapes, so they are balanced), encodes them with the init checkpoint's VAE at exactly that size
(`data.precache`), fine-tunes the init DiT (default: the embedded model) on them alone with
`train_video.py` (latent loss only, constant lr), then samples their captions at the same size and scores
the clips with the oracle evaluator (`bench.prompt_following`, seed base --seed). Three sources in one
run, each one JSON line (accuracy per attribute, then per shape: clips read right and median fill):

    vae      the cached latents decoded: what a DiT that reproduced them exactly would score
    init     the init DiT before fine-tuning, at each --cfg
    fitted   the fine-tuned EMA, at each --cfg (train_s: seconds this invocation spent training)

A DiT that can fit its data reaches the `vae` line on a handful of clips; the gap between `init` and
`vae` on clips it was trained on is underfitting, not generalisation. Resumable: a finished cache and
a finished training run in --out are reused, and a larger --steps resumes the run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.prompt_following import by_shape, figures
from bench.prompt_following import main as prompt_following
from videodit.eval import score_clips
from videodit.mp4 import read_mp4

SHAPES = ("circle", "square", "triangle")


def select_clips(manifest: Path, num: int, height: int, width: int, frames: int) -> list[dict]:
    """The first `num` rows of size height x width with >= frames frames, round-robin over shapes."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    fits = [r for r in rows if (r.get("height"), r.get("width")) == (height, width)
            and r.get("num_frames", 0) >= frames and r.get("shape") in SHAPES]
    queues = {s: [r for r in fits if r["shape"] == s] for s in SHAPES}
    chosen: list[dict] = []
    while len(chosen) < num and any(queues.values()):
        for s in SHAPES:
            if queues[s] and len(chosen) < num:
                chosen.append(queues[s].pop(0))
    if len(chosen) < num:
        raise SystemExit(f"{manifest}: only {len(chosen)} clips of {height}x{width} with >= {frames} frames "
                         f"(asked for {num})")
    for r in chosen:
        r["path"] = str((manifest.parent / r["path"]).resolve())
    return chosen


def decode_cache(cache: Path, vae, frames: int, height: int, width: int, folder: Path) -> list[tuple]:
    """The cached latents decoded and written as mp4 the way generated clips are (`generate.decode_to_mp4`),
    read back -> [(frames uint8, caption)]."""
    import generate
    from data.precache import LatentCache

    source, items = LatentCache(cache), []
    for j in range(len(source)):
        s = source.load(j)
        out = folder / f"vae-{j:04d}.mp4"
        request = generate.GenRequest(s["caption"], frames, height, width, 0, "", out)
        generate.decode_to_mp4(s["latent"], request, vae, 16.0)
        items.append((read_mp4(out), s["caption"]))
    return items


def sampled(dit: str, prompts: Path, num: int, seed: int, steps: int, cfg: float, res, frames: int) -> dict:
    """bench.prompt_following on the chosen clips' captions -> its summary line and per-shape figures."""
    lines = prompt_following(["--dit", dit, "--prompts", str(prompts), "--num", str(num),
                              "--seeds", str(seed), "--steps", str(steps), "--cfg", str(cfg),
                              "--frames", str(frames), "--res", str(res[0]), str(res[1])])
    return lines[-1]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True, help="training manifest (JSONL with shape, size)")
    ap.add_argument("--out", type=Path, required=True, help="work folder (cache, run, prompts)")
    ap.add_argument("--init", default="default", help="DiT checkpoint to fine-tune (default: embedded)")
    ap.add_argument("--num", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3000, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--res", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--sample-steps", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.num < 1 or args.steps < 1 or args.frames < 1:
        ap.error("--num, --steps and --frames must be >= 1")

    import yaml

    import generate
    import train_video
    from data import precache
    from vae3d.io import load_vae
    from videodit.checkpoint import load_dit
    from videodit.packing import num_tokens

    height, width = args.res
    clips = select_clips(args.manifest, args.num, height, width, args.frames)  # before any compute
    cache = args.out / "cache"
    if (cache / "index.json").is_file():
        cached = [e["path"] for e in json.loads((cache / "index.json").read_text())["samples"]]
        if sorted(cached) != sorted(r["path"] for r in clips):
            raise SystemExit(f"{cache} holds other clips than --num {args.num} of {args.manifest} select: "
                             "use another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clips))
    prompts = args.out / "prompts.jsonl"
    keys = ("caption", "colour", "shape", "motion", "background")
    rows = [{k: r[k] for k in keys} | {"heldout": False} for r in clips]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    dit, meta = load_dit(args.init)
    vae = load_vae(meta["vae"]).eval()
    patch = tuple(dit.config.patch)
    latent = generate.latent_shape(args.frames, height, width, vae.temporal_stride, vae.spatial_stride)
    tokens = num_tokens(tuple(latent), patch)
    if not (cache / "index.json").is_file():
        precache.main(["--manifest", str(args.out / "train.jsonl"), "--out", str(cache), "--vae", meta["vae"],
                       "--text-encoder", meta["text_encoder"], "--patch", *map(str, patch),
                       "--min-tokens", str(tokens), "--max-tokens", str(tokens),
                       "--min-frames", str(args.frames), "--max-frames", str(args.frames),
                       "--shard-size", "1000"])

    run = args.out / "run"
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(dit.config).items()}
    flow = {k: v for k, v in (meta.get("flow") or {}).items() if not k.startswith("pixel")}
    config = {"model": model, "flow": flow,
              "data": {"cache": str(cache), "vae": meta["vae"], "text_encoder": meta["text_encoder"],
                       "row_tokens": max(512, tokens), "max_tokens": tokens, "min_tokens": tokens,
                       "min_frames": args.frames, "max_frames": args.frames},
              "train": {"output_dir": str(run), "init_from": str(args.init), "max_steps": args.steps,
                        "lr": args.lr, "warmup_steps": min(50, args.steps), "ema_decay": 0.99,
                        "log_every": 50, "save_every": max(1, min(250, args.steps))},
              "deepspeed": {"zero_stage": 0}}
    (args.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    del dit
    started = time.perf_counter()
    train_video.main(["--config", str(args.out / "config.yaml")])  # resumes; a finished run returns at once
    train_s = time.perf_counter() - started

    lines = []
    tmp = args.out / "vae_decoded"
    tmp.mkdir(exist_ok=True)
    scores = score_clips(decode_cache(cache, vae, args.frames, height, width, tmp))
    lines.append({"source": "vae", "clips": len(clips), **figures(scores), "shapes": by_shape(scores)})
    for source, dit_dir in (("init", str(args.init)), ("fitted", str(run / "ema"))):
        for cfg in args.cfg:
            summary = sampled(dit_dir, prompts, args.num, args.seed, args.sample_steps, cfg, args.res,
                              args.frames)
            line = {"source": source, "cfg": cfg, "clips": summary["clips"],
                    **{k: v for k, v in summary.items() if k.startswith("all_")},
                    "shapes": summary.get("shapes")}
            if source == "fitted":
                line.update(steps=args.steps, train_s=round(train_s, 1))
            lines.append(line)
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


if __name__ == "__main__":
    main()
