"""Text-to-video generation.

    python generate.py --prompt "dog running in snow" --frames 64 --res 720x1280
    python generate.py --prompts-file requests.jsonl --out outputs/batch/

`--res` is HEIGHTxWIDTH and the video has exactly `--frames` frames at exactly that size: the latent
covers the size rounded up to the VAE's spatial stride, and the decoded frames are centre-cropped back.
`--init-video PATH --strength S` turns this into video-to-video (SDEdit, Meng et al. 2022): the first
`--frames` frames of PATH at its own frame rate (an image stands still for all of them), scaled to
cover `--res` and centre-cropped, are encoded by the VAE, noised to the sampler sigma S and denoised
from there under the prompt: S near 0 keeps the video, 1 ignores it.

Conditioning (on a checkpoint with a causal tubelet; its meta lists the tasks it was trained for):
`--image PATH` gives the first frame (an image, or a video's first frame), `--extend VIDEO` continues a
clip: its frames at `--fps` are kept (the longest prefix whose latent frames are whole tokens) and the rest
up to `--frames` is generated. `--last-image PATH`, with `--image`, gives the last frame too: it is encoded
alone and given as a token group after the video (`videodit.last_frame`), so the latent's frame count must
end on a token group (1 + 8k frames for the default). All are scaled to cover `--res` and centre-cropped
like `--init-video`; the given frames are re-imposed at every step and come back as the VAE's
reconstruction of them.

With `--prompts-file` (JSONL: one object a line with "prompt" and optional "frames", "res", "seed",
"negative_prompt", "init_video", "strength", "image", "last_image", "extend"), all requests, whatever their
shapes and
tasks, are packed into the same denoising forward passes, and line i is written to `{out}/{i:04d}.mp4`.

Under a launcher (`deepspeed --num_accelerators N generate.py ...`, or `torchrun --nproc_per_node N`), the
N ranks share every denoising forward pass: each runs the DiT on 1/N of the pass's tokens (Ulysses
sequence parallelism, `videodit.sequence_parallel.ShardedSampler`; N must divide the DiT's heads), the
predictions are gathered on every rank, and rank 0 alone decodes and writes the videos. The videos are
those one rank would write.

`--ckpt` also takes a diffusers WanPipeline folder (e.g. Wan2.1-T2V-1.3B-Diffusers, downloaded beforehand):
its transformer, VAE, UMT5 text encoder and scheduler are used, and sampling follows diffusers' WanPipeline
(its scheduler, 50 steps and guidance 5 by default, the negative prompt or "" as the unconditional input),
text to video only. `--lora PATH[:SCALE]` (repeatable) merges LoRA files into the DiT at that scale.

Every argument is checked before anything heavy is imported or loaded; bad input exits with one line on
stderr (status 2). torch, diffusers and transformers are imported only after validation, so that a typo
costs milliseconds, not seconds. Then, still before any weights are read, the checkpoint's and the VAE's
folders are checked (config.json and weights headers) and each request's peak memory is estimated
(`videodit.budget`): a request that cannot fit the available memory (MemAvailable, or --max-memory-gb) is
refused with the numbers, and a prompts file is split into packed passes that each fit. Init videos are
decoded next, before any model is loaded. An unexpected internal error prints one line (--debug: the
traceback) and exits with status 1.

Outputs: a default name is a slug of the prompt plus a short hash of the whole request (the same request
gives the same name). An existing output (or a prompts-file target) is refused unless --overwrite. Each
video is written atomically and gets a sidecar .json (request, seed, sampler settings, checkpoint hash);
a 1-frame video also gets a .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import tempfile
import traceback
from pathlib import Path

from videodit.lora_spec import parse_lora_spec
from videodit.outputs import drop_descriptions, existing_targets
from videodit.video_reader import first_frames, read_conditioning
from videodit.video_request import (
    DEFAULT_STRENGTH,
    VideoRequest,
    check_fps,
    check_frames,
    check_init_video,
    check_last_image,
    check_positive_int,
    check_seed,
    check_strength,
    check_text,
    default_out,
    parse_blocks,
    parse_cfg_interval,
    parse_prompts_file,
    parse_resolution,
    requests_from_items,
)

SAMPLERS = ("euler", "heun", "unipc")  # videodit.sampling.SAMPLERS (not imported: keeps validation light)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # videodit.pipeline.DTYPES


class UsageError(ValueError):
    """Bad command-line input: reported as one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage + message and exit; we want one line
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Generate videos from text with a videodit checkpoint.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text prompt")
    src.add_argument("--prompts-file", type=Path, help="JSONL file, one request a line (see module doc)")
    p.add_argument("--frames", type=int, default=16, help="number of frames, exact (default 16)")
    p.add_argument("--res", default="256x256", help="HEIGHTxWIDTH in pixels, exact (default 256x256)")
    p.add_argument("--fps", type=float, default=16.0, help="frames per second of the mp4 (default 16)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's, else 30)")
    p.add_argument("--cfg", type=float, help="guidance scale >= 1 (default: the checkpoint's, else 5)")
    p.add_argument("--cfg-interval",
                   help="LO,HI: guide only at noise levels sigma in [LO, HI], 0 <= LO <= HI <= 1; other "
                        "steps run the conditional pass alone (default: the checkpoint's, else 0,1)")
    p.add_argument("--skip-guidance", type=float,
                   help="skip-layer guidance scale >= 0: steer away from the DiT with --skip-blocks made "
                        "identity; one more pass a step (default: the checkpoint's, else 0 = off)")
    p.add_argument("--skip-blocks", help="comma-separated DiT block indices that skip-layer guidance "
                                         "skips (default: the checkpoint's)")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (default: none)")
    p.add_argument("--init-video", type=Path,
                   help="video-to-video: start from this video (or image) instead of noise (SDEdit)")
    p.add_argument("--strength", type=float,
                   help=f"with --init-video: how much to change it, in (0, 1]; 1 = ignore it "
                        f"(default {DEFAULT_STRENGTH})")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--image", type=Path,
                      help="image-to-video: the first frame (an image, or a video's first frame)")
    cond.add_argument("--extend", type=Path, help="continue this clip up to --frames, keeping its frames")
    p.add_argument("--last-image", type=Path,
                   help="with --image: the last frame (an image, or a video's first frame); the video goes "
                        "from the first to the last")
    p.add_argument("--seed", type=int, default=0, help="random seed (prompts file: seed + line index)")
    p.add_argument("--sampler", choices=SAMPLERS, help="scheduler (default: the checkpoint's, else euler)")
    p.add_argument("--ckpt", default="default", help="DiT checkpoint folder (default: the embedded model)")
    p.add_argument("--vae", default=None,
                   help="VAE to decode with: 'default' or a VAE folder (default: the checkpoint's own). "
                        "It must share the checkpoint VAE's latent space, e.g. a decoder fine-tuned with "
                        "its encoder frozen")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="merge this LoRA (diffusers/PEFT or original Wan safetensors) into the DiT at SCALE "
                        "(default 1); repeatable")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--out", type=Path, help="output .mp4 (or a folder with --prompts-file); default: "
                                             "outputs/<prompt slug>-<request hash>.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")
    p.add_argument("--max-memory-gb", type=float,
                   help="memory the run may use, GiB (default: MemAvailable); larger requests are refused")
    p.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by deepspeed
    return p


def _check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove it writable by creating and removing a probe file there.

    (A permission-bit test is not enough: as root `os.access` says yes even for /proc.)
    """
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(f"cannot write {what}: {str(existing)!r} is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {what}: {e.strerror or e} ({str(folder)!r})") from None


def _check_ckpt(ckpt: str) -> None:
    if ckpt == "default":
        return
    folder = Path(ckpt)
    if not folder.is_dir():
        raise ValueError(f"--ckpt {ckpt!r} does not exist")
    if (folder / "model_index.json").is_file():
        return  # a diffusers pipeline folder: its class and parts are checked when it loads
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise ValueError(f"--ckpt {ckpt!r} is not a DiT checkpoint folder (no {name})")


def _check_vae(vae: str | None) -> None:
    if vae is None or vae == "default":
        return
    folder = Path(vae)
    if not (folder / "config.json").is_file() and not (folder / "vae" / "config.json").is_file():
        raise ValueError(f"--vae {vae!r} is not 'default' or a VAE folder with config.json")


def _check_wan_args(args: argparse.Namespace) -> None:
    """A WanPipeline folder samples with its own scheduler and text-to-video only."""
    given = {"--sampler": args.sampler, "--cfg-interval": args.cfg_interval,
             "--skip-guidance": args.skip_guidance, "--skip-blocks": args.skip_blocks,
             "--init-video": args.init_video, "--image": args.image, "--extend": args.extend,
             "--last-image": args.last_image}
    bad = [name for name, value in given.items() if value is not None]
    if bad:
        raise ValueError(f"--ckpt {args.ckpt!r} is a Wan pipeline folder, which samples with its own "
                         f"scheduler, text to video only; drop {', '.join(bad)}")


def validate(args: argparse.Namespace) -> list[VideoRequest]:
    """All user input -> requests, or ValueError. Reads the prompts file; loads nothing heavy."""
    if args.prompt is None and args.prompts_file is None:
        raise UsageError("give --prompt TEXT or --prompts-file FILE")
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt must not be empty")
    check_text(args.prompt, "--prompt")
    check_text(args.negative_prompt, "--negative-prompt")
    check_frames(args.frames, "--frames")
    height, width = parse_resolution(args.res)
    check_fps(args.fps, "--fps")
    if args.max_memory_gb is not None and not (args.max_memory_gb > 0 and math.isfinite(args.max_memory_gb)):
        raise ValueError(f"--max-memory-gb must be a number of GiB > 0, got {args.max_memory_gb}")
    if args.steps is not None:
        check_positive_int(args.steps, "--steps")
    if args.cfg is not None and not (args.cfg >= 1.0 and math.isfinite(args.cfg)):
        raise ValueError(f"--cfg must be >= 1 (1 = no guidance), got {args.cfg}")
    if args.cfg_interval is not None:
        parse_cfg_interval(args.cfg_interval)
    if args.skip_guidance is not None and not (args.skip_guidance >= 0 and math.isfinite(args.skip_guidance)):
        raise ValueError(f"--skip-guidance must be >= 0, got {args.skip_guidance}")
    if args.skip_blocks is not None:
        parse_blocks(args.skip_blocks)
    check_seed(args.seed, "--seed")
    init = check_init_video(args.init_video, "--init-video") if args.init_video is not None else None
    if args.strength is not None:
        check_strength(args.strength, "--strength")
    if args.strength is not None and init is None and args.prompt is not None:
        raise ValueError("--strength needs --init-video (it says how far to move from that video)")
    image = check_init_video(args.image, "--image") if args.image is not None else None
    extend = check_init_video(args.extend, "--extend") if args.extend is not None else None
    if (image or extend) and init is not None:
        raise ValueError("--init-video cannot be combined with --image or --extend: give one")
    if (image or extend) and args.prompts_file is not None:
        raise ValueError("--image / --extend go with --prompt; in a prompts file give them per line "
                         "(\"image\", \"extend\")")
    if image is not None and args.frames < 2:
        raise ValueError("--image gives the first frame: ask for --frames > 1")
    last_image = check_init_video(args.last_image, "--last-image") if args.last_image is not None else None
    if last_image is not None:
        if args.prompts_file is not None:
            raise ValueError("--last-image goes with --prompt; in a prompts file give it per line "
                             "(\"last_image\")")
        check_last_image(image is not None, args.frames, "--last-image", "--image", "--frames")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", args.device):
        raise ValueError(f"--device {args.device!r} must be auto, cpu, cuda, cuda:N or mps")
    _check_ckpt(args.ckpt)
    _check_vae(args.vae)
    for spec in args.lora:
        parse_lora_spec(spec)
    if (Path(args.ckpt) / "model_index.json").is_file():
        _check_wan_args(args)
    if args.out is not None and str(args.out) == "":
        raise ValueError("--out must not be empty")

    if args.prompt is not None:
        out = args.out or default_out(args.prompt, args.seed, request_fields(args))
        if out.suffix.lower() != ".mp4":
            raise ValueError(f"--out {str(out)!r} must be an .mp4 file")
        if out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a directory; give a .mp4 file name")
        _check_writable(out.parent, f"--out {str(out)!r}")
        _check_not_there([(out, args.frames)], args.overwrite)
        strength = 1.0 if init is None else DEFAULT_STRENGTH if args.strength is None else args.strength
        return [VideoRequest(args.prompt, args.frames, height, width, args.seed, args.negative_prompt, out,
                             init, strength, image, extend, last_image)]

    path = args.prompts_file
    if not path.is_file():
        raise ValueError(f"--prompts-file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --prompts-file {str(path)!r}: {e}") from None
    items = parse_prompts_file(text, str(path))
    folder = args.out or Path("outputs") / path.stem
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {str(folder)!r} must be a folder when --prompts-file is given")
    _check_writable(folder, f"--out folder {str(folder)!r}")
    requests = requests_from_items(items, folder, args.frames, height, width, args.seed, args.negative_prompt,
                                   init, args.strength, str(path))
    _check_not_there([(r.out, r.frames) for r in requests], args.overwrite)
    return requests


def request_fields(args: argparse.Namespace) -> dict:
    """Everything on the command line that decides the video of a --prompt request (its name's hash)."""
    keys = ("prompt", "negative_prompt", "frames", "res", "fps", "seed", "steps", "cfg", "cfg_interval",
            "skip_guidance", "skip_blocks", "sampler", "init_video", "strength", "image", "extend", "ckpt",
            "vae", "dtype", "last_image")
    return {k: None if getattr(args, k) is None else str(getattr(args, k)) for k in keys}


def _check_not_there(outs: list[tuple[Path, int]], overwrite: bool) -> None:
    there = [] if overwrite else existing_targets(outs)
    if there:
        more = f" and {len(there) - 3} more" if len(there) > 3 else ""
        raise ValueError(f"{', '.join(repr(str(p)) for p in there[:3])}{more} already exist(s); pass "
                         f"--overwrite to replace, or choose another --out")


def check_memory(args: argparse.Namespace, requests: list[VideoRequest]) -> int:
    """Refuse (ValueError with the numbers) a request that cannot run in the available memory, reading the
    checkpoint's and VAE's config and weights headers only -> the tokens one packed pass may hold."""
    from videodit import budget
    from videodit.footprint import available_bytes, footprint
    from videodit.pipeline import resolve_device
    from videodit.video_reader import source_extent

    device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    fp, meta = footprint(args.ckpt, args.vae, 4 if dtype == "float32" else 2)
    recommended = meta.get("sampling") or {}
    guided = (args.cfg if args.cfg is not None else recommended.get("cfg", 5.0)) != 1.0
    skip = (args.skip_guidance if args.skip_guidance is not None else recommended.get("skip_guidance", 0)) > 0
    available = available_bytes(device, args.max_memory_gb)
    for r in requests:
        source = r.init_video or r.image or r.extend
        size = None if source is None else source_extent(source, r.frames)
        _, need = budget.request_tokens_and_bytes(r.frames, r.height, r.width, fp, guided, skip, size)
        budget.check_fits(need, available, f"{r.out.name} ({r.frames} frames of {r.height}x{r.width})")
    return budget.pass_token_budget(fp, available)


def write_sidecars(args: argparse.Namespace, requests: list[VideoRequest], settings, meta: dict) -> None:
    """A .json beside each video: its request, seed, sampler settings and the checkpoint's hash."""
    from dataclasses import asdict

    from videodit.checkpoint import DEFAULT_DIR, WEIGHTS_FILE
    from videodit.outputs import file_sha256, write_sidecar

    weights = (DEFAULT_DIR if args.ckpt == "default" else Path(args.ckpt)) / WEIGHTS_FILE
    checkpoint = {"ckpt": args.ckpt, "vae": args.vae or meta.get("vae"),
                  "text_encoder": meta.get("text_encoder"), "random_init": bool(meta.get("random_init")),
                  "sha256": file_sha256(weights) if weights.is_file() else None}
    for r in requests:
        request = {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "frames": r.frames,
                   "res": f"{r.height}x{r.width}", "fps": args.fps, "seed": r.seed,
                   **{k: str(getattr(r, k)) for k in ("init_video", "image", "last_image", "extend")
                      if getattr(r, k)},
                   **({"strength": r.strength} if r.init_video else {})}
        write_sidecar(r.out, {"video": r.out.name, "request": request, "seed": r.seed,
                              "sampling": asdict(settings), "checkpoint": checkpoint,
                              "device": args.device, "dtype": args.dtype})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        requests = validate(args)
        token_budget = check_memory(args, requests)
        # decoded before any model is loaded: an unreadable or too short init video costs no model load
        inits = {i: first_frames(r.init_video, r.frames, str(r.out), repeat_image=False)
                 for i, r in enumerate(requests) if r.init_video is not None}
        conds = {i: read_conditioning(r.image, r.extend, r.frames, args.fps)
                 for i, r in enumerate(requests) if r.image is not None or r.extend is not None}
        lasts = {i: read_conditioning(r.last_image, None, r.frames, args.fps)
                 for i, r in enumerate(requests) if r.last_image is not None}
        from videodit import pipeline  # heavy imports (torch, diffusers, transformers) from here on

        rank, world, device = _join_ranks(args.device)
        pipe = pipeline.load_pipeline(args.ckpt, args.vae, device, args.dtype)
        if args.lora:
            from videodit.lora import apply_lora_files

            apply_lora_files(pipe.dit, [parse_lora_spec(spec) for spec in args.lora])
        if world > 1:  # the ranks share every denoising pass
            from videodit.sequence_parallel import ShardedSampler

            pipe = dataclasses.replace(pipe, dit=ShardedSampler(pipe.dit, rank, world))
        settings = pipeline.sampling_settings(
            pipe.meta, steps=args.steps, cfg=args.cfg, sampler=args.sampler, skip_guidance=args.skip_guidance,
            cfg_interval=None if args.cfg_interval is None else parse_cfg_interval(args.cfg_interval),
            skip_blocks=None if args.skip_blocks is None else parse_blocks(args.skip_blocks),
        )
        if pipe.random and rank == 0:
            print(f"note: the {' and '.join(pipe.random)} weights are RANDOM (no trained checkpoint yet); "
                  "the pipeline runs end to end but the video will not depict the prompt")
        for note in pipeline.extent_notes(requests, pipe.meta, pipe.vae) + pipeline.task_warnings(requests,
                                                                                                  pipe.meta):
            if rank == 0:
                print(note)
        if rank == 0:
            drop_descriptions([r.out for r in requests])  # (--overwrite) never an old sidecar on a new video
        if world > 1:  # every rank samples, rank 0 writes
            latents = pipeline.sample_latents(pipe, requests, settings, inits, rank == 0, conds, token_budget,
                                              lasts)
            written = [pipeline.decode_to_mp4(z, r, pipe.vae, args.fps,
                                              **({"png": r.out.with_suffix(".png")} if r.frames == 1 else {}))
                       for r, z in zip(requests, latents) if rank == 0]
        else:
            written = pipeline.generate(pipe, requests, settings, args.fps, inits, conds=conds,
                                        token_budget=token_budget, still_png=True, lasts=lasts)
        if rank == 0:
            write_sidecars(args, requests, settings, pipe.meta)
        for request, n in zip(requests, written):
            print(f"wrote {n} frames of {request.height}x{request.width} to {request.out}")
    except ValueError as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("generate.py: interrupted (every video already written is complete; none is partial)",
              file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or the machine (e.g. out of memory): one line, the traceback on request
        if "--debug" in argv:
            traceback.print_exc()
        text = " ".join(str(e).split())[:300]
        print(f"generate.py: internal error: {type(e).__name__}: {text} (run again with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1
    return 0


def _join_ranks(device: str) -> tuple[int, int, str]:
    """Under a launcher (deepspeed, torchrun: RANK and WORLD_SIZE set) join its process group ->
    (rank, world size, this rank's device: its local GPU for 'auto'/'cuda'); else (0, 1, device)."""
    import torch

    from videodit.distributed import env_rank_world, init_distributed

    rank, world = env_rank_world()
    if world == 1:
        return 0, 1, device
    _, local_rank, _ = init_distributed()
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    return rank, world, device


if __name__ == "__main__":
    sys.exit(main())
