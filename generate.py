"""Text-to-video generation.

    python generate.py --prompt "dog running in snow" --frames 64 --res 720x1280
    python generate.py --prompts-file requests.jsonl --out outputs/batch/

`--res` is HEIGHTxWIDTH and the video has exactly `--frames` frames at exactly that size: the latent
covers the size rounded up to the VAE's spatial stride, and the decoded frames are centre-cropped back.
`--init-video PATH --strength S` turns this into video-to-video (SDEdit, Meng et al. 2022): the first
`--frames` frames of PATH at its own frame rate (an image stands still for all of them), scaled to
cover `--res` and centre-cropped, are encoded by the VAE, noised to the sampler sigma S and denoised
from there under the prompt: S near 0 keeps the video, 1 ignores it.

With `--prompts-file` (JSONL: one object a line with "prompt" and optional "frames", "res", "seed",
"negative_prompt", "init_video", "strength"), all requests, whatever their shapes, are packed into the
same denoising forward passes, and line i is written to `{out}/{i:04d}.mp4`.

Every argument is checked before anything heavy is imported or loaded; bad input exits with one line on
stderr (status 2). torch, diffusers and transformers are imported only after validation, so that a typo
costs milliseconds, not seconds; init videos are decoded next, before any model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SAMPLERS = ("euler", "heun", "unipc")  # videodit.sampling.SAMPLERS (not imported: keeps validation light)
DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_SIDE = 8192  # pixels
TOKEN_BUDGET = 65536  # tokens of one denoising forward pass; a larger request runs alone
DECODE_CHUNK_FRAMES = 8  # pixel frames the VAE decodes per step (memory is bounded by this and the tile)
PROMPT_KEYS = {"prompt", "frames", "res", "seed", "negative_prompt", "init_video", "strength"}
DEFAULT_STRENGTH = 0.6  # --strength when an init video is given and no strength is


@dataclass
class GenRequest:
    """One video to make, fully validated."""

    prompt: str
    frames: int  # F, exact
    height: int  # H, exact
    width: int  # W, exact
    seed: int
    negative_prompt: str
    out: Path
    init_video: Path | None = None  # video-to-video: start from this video's latent (SDEdit)
    strength: float = 1.0  # sigma the init latent is noised to; 1 = from noise


class UsageError(ValueError):
    """Bad command-line input: reported as one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage + message and exit; we want one line
        raise UsageError(message)


def parse_cfg_interval(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi) with 0 <= lo <= hi <= 1, else ValueError naming --cfg-interval."""
    parts = str(text).split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--cfg-interval must be LO,HI (two numbers), got {text!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"--cfg-interval must satisfy 0 <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def parse_blocks(text: str) -> tuple[int, ...]:
    """'2,3' -> (2, 3): block indices >= 0, else ValueError naming --skip-blocks ('' -> ())."""
    if str(text).strip() == "":
        return ()
    try:
        blocks = tuple(int(b) for b in str(text).split(","))
    except ValueError:
        raise ValueError(f"--skip-blocks must be comma-separated block indices, got {text!r}") from None
    if min(blocks) < 0:
        raise ValueError(f"--skip-blocks must be >= 0, got {text!r}")
    return blocks


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
    p.add_argument("--seed", type=int, default=0, help="random seed (prompts file: seed + line index)")
    p.add_argument("--sampler", choices=SAMPLERS, help="scheduler (default: the checkpoint's, else euler)")
    p.add_argument("--ckpt", default="default", help="DiT checkpoint folder (default: the embedded model)")
    p.add_argument("--vae", default=None,
                   help="VAE to decode with: 'default' or a VAE folder (default: the checkpoint's own). "
                        "It must share the checkpoint VAE's latent space, e.g. a decoder fine-tuned with "
                        "its encoder frozen")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--out", type=Path, help="output .mp4 (or a folder with --prompts-file)")
    return p


# ---- pure helpers (tested directly) ------------------------------------------------------------------
def parse_resolution(text: str) -> tuple[int, int]:
    """'720x1280' -> (720, 1280) = (height, width); ValueError naming the text otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"resolution {text!r} must look like HEIGHTxWIDTH, e.g. 720x1280")
    h, w = int(m.group(1)), int(m.group(2))
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"resolution {text!r}: height and width must be in [1, {MAX_SIDE}]")
    return h, w


def latent_shape(frames: int, height: int, width: int, temporal_stride: int, spatial_stride: int):
    """Latent (T, h, w) that decodes to at least `frames` x `height` x `width` pixels.

    T = 1 + ceil((F - 1) / ts) (the causal VAE decodes exactly F frames from it); h, w = ceil(H / ss),
    ceil(W / ss) (the decoded frames are cropped back to H x W).
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"frames, height and width must be >= 1, got {frames}, {height}, {width}")
    t = 1 + math.ceil((frames - 1) / temporal_stride)
    return t, math.ceil(height / spatial_stride), math.ceil(width / spatial_stride)


def crop_box(decoded: tuple[int, int], wanted: tuple[int, int]) -> tuple[slice, slice]:
    """Centre crop of a decoded (H', W') frame to the wanted (H, W)."""
    (hd, wd), (h, w) = decoded, wanted
    top, left = (hd - h) // 2, (wd - w) // 2
    return slice(top, top + h), slice(left, left + w)


def _positive_int(value, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}{what} must be a positive integer, got {value!r}")
    return value


def _seed(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{where}seed must be an integer in [0, 2**63), got {value!r}")
    return value


def _strength(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{where}strength must be a number in (0, 1] (1 = ignore the init video), "
                         f"got {value!r}")
    return float(value)


def _init_video(value, where: str) -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ValueError(f"{where}init video must be a file path, got {value!r}")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{where}init video {str(path)!r} does not exist or is not a file")
    return path


def parse_prompts_file(text: str, source: str = "prompts file") -> list[dict]:
    """JSONL text -> one dict per non-blank line with exactly the keys the line gave, validated.

    Each line: {"prompt": str, "frames"?: int >= 1, "res"?: "HxW", "seed"?: int >= 0,
    "negative_prompt"?: str, "init_video"?: path of an existing file, "strength"?: (0, 1]}. ValueError
    messages name `source:line`. Relative init_video paths are taken as given (from the working directory).
    """
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}: "
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}not valid JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}expected a JSON object, got {type(item).__name__}")
        unknown = sorted(set(item) - PROMPT_KEYS)
        if unknown:
            raise ValueError(f"{where}unknown key(s) {unknown}; valid: {sorted(PROMPT_KEYS)}")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}'prompt' must be a non-empty string")
        if "frames" in item:
            _positive_int(item["frames"], "frames", where)
        if "res" in item:
            if not isinstance(item["res"], str):
                raise ValueError(f"{where}res must be a string like '720x1280', got {item['res']!r}")
            try:
                parse_resolution(item["res"])
            except ValueError as e:
                raise ValueError(f"{where}{e}") from None
        if "seed" in item:
            _seed(item["seed"], where)
        if "negative_prompt" in item and not isinstance(item["negative_prompt"], str):
            raise ValueError(f"{where}negative_prompt must be a string")
        if "init_video" in item:
            _init_video(item["init_video"], where)
        if "strength" in item:
            _strength(item["strength"], where)
        items.append(item)
    if not items:
        raise ValueError(f"{source} has no requests")
    return items


def default_out(prompt: str, seed: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "video"
    return Path("outputs") / f"{slug}-seed{seed}.mp4"


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
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise ValueError(f"--ckpt {ckpt!r} is not a DiT checkpoint folder (no {name})")


def _check_vae(vae: str | None) -> None:
    if vae is None or vae == "default":
        return
    folder = Path(vae)
    if not (folder / "config.json").is_file() and not (folder / "vae" / "config.json").is_file():
        raise ValueError(f"--vae {vae!r} is not 'default' or a VAE folder with config.json")


def validate(args: argparse.Namespace) -> list[GenRequest]:
    """All user input -> requests, or ValueError. Reads the prompts file; loads nothing heavy."""
    if args.prompt is None and args.prompts_file is None:
        raise UsageError("give --prompt TEXT or --prompts-file FILE")
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt must not be empty")
    _positive_int(args.frames, "--frames", "")
    height, width = parse_resolution(args.res)
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    if args.steps is not None:
        _positive_int(args.steps, "--steps", "")
    if args.cfg is not None and not (args.cfg >= 1.0 and math.isfinite(args.cfg)):
        raise ValueError(f"--cfg must be >= 1 (1 = no guidance), got {args.cfg}")
    if args.cfg_interval is not None:
        parse_cfg_interval(args.cfg_interval)
    if args.skip_guidance is not None and not (args.skip_guidance >= 0 and math.isfinite(args.skip_guidance)):
        raise ValueError(f"--skip-guidance must be >= 0, got {args.skip_guidance}")
    if args.skip_blocks is not None:
        parse_blocks(args.skip_blocks)
    _seed(args.seed, "--")
    init = _init_video(args.init_video, "--") if args.init_video is not None else None
    if args.strength is not None:
        _strength(args.strength, "--")
    if args.strength is not None and init is None and args.prompt is not None:
        raise ValueError("--strength needs --init-video (it says how far to move from that video)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", args.device):
        raise ValueError(f"--device {args.device!r} must be auto, cpu, cuda, cuda:N or mps")
    _check_ckpt(args.ckpt)
    _check_vae(args.vae)
    if args.out is not None and str(args.out) == "":
        raise ValueError("--out must not be empty")

    if args.prompt is not None:
        out = args.out or default_out(args.prompt, args.seed)
        if out.suffix.lower() != ".mp4":
            raise ValueError(f"--out {str(out)!r} must be an .mp4 file")
        if out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a directory; give a .mp4 file name")
        _check_writable(out.parent, f"--out {str(out)!r}")
        strength = 1.0 if init is None else DEFAULT_STRENGTH if args.strength is None else args.strength
        return [GenRequest(args.prompt, args.frames, height, width, args.seed, args.negative_prompt, out,
                           init, strength)]

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
    if args.strength is not None and init is None and not any("init_video" in item for item in items):
        raise ValueError("--strength needs --init-video or requests with init_video")
    requests = []
    for i, item in enumerate(items):
        h, w = parse_resolution(item["res"]) if "res" in item else (height, width)
        line_init = Path(item["init_video"]) if "init_video" in item else init
        if line_init is None and "strength" in item:
            raise ValueError(f"{path}: request {i + 1} ({i:04d}.mp4) has a strength but no init_video "
                             f"(nor --init-video)")
        strength = item.get("strength", args.strength)
        requests.append(
            GenRequest(
                prompt=item["prompt"],
                frames=item.get("frames", args.frames),
                height=h,
                width=w,
                seed=item.get("seed", args.seed + i),
                negative_prompt=item.get("negative_prompt", args.negative_prompt),
                out=folder / f"{i:04d}.mp4",
                init_video=line_init,
                strength=1.0 if line_init is None else DEFAULT_STRENGTH if strength is None else strength,
            )
        )
    return requests


# ---- build and run (heavy imports from here on) ------------------------------------------------------
SAMPLING_DEFAULTS = {"steps": 30, "cfg": 5.0, "sampler": "euler", "cfg_interval": "0,1", "skip_guidance": 0.0,
                     "skip_blocks": ""}


def apply_sampling_defaults(args: argparse.Namespace, recommended: dict) -> None:
    """Fill the sampling flags left unset (--steps, --cfg, --sampler, --cfg-interval, --skip-guidance,
    --skip-blocks): the checkpoint's recommendation, else SAMPLING_DEFAULTS."""
    for key, fallback in SAMPLING_DEFAULTS.items():
        if getattr(args, key) is None:
            value = recommended.get(key, fallback)
            if key in ("cfg_interval", "skip_blocks") and not isinstance(value, str):
                value = ",".join(str(v) for v in value)  # a checkpoint stores a list
            setattr(args, key, value)


def build(args: argparse.Namespace):
    """-> (dit, meta, vae, text_encoder, flow_cfg, device, dtype). Loads the models."""
    import torch
    import transformers

    from vae3d.io import load_vae
    from videodit.checkpoint import load_dit
    from videodit.config import from_dict
    from videodit.flow import FlowConfig
    from videodit.text_encoder import TextEncoder

    transformers.utils.logging.disable_progress_bar()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, name)

    dit, meta = load_dit(args.ckpt, device=device, dtype=dtype)
    vae = load_vae(args.vae or meta["vae"], device=device, dtype=dtype)
    text = TextEncoder(meta["text_encoder"], device=device, dtype=dtype)
    flow_cfg = from_dict(FlowConfig, meta.get("flow") or {}, "meta.flow")
    vae_random = getattr(vae, "is_random_init", False)
    if text.dim != dit.config.text_dim:
        raise ValueError(f"text encoder width {text.dim} != the DiT's text_dim {dit.config.text_dim}")
    if vae.latent_channels != dit.config.in_channels:
        raise ValueError(
            f"VAE latent channels {vae.latent_channels} != DiT in_channels {dit.config.in_channels}"
        )
    apply_sampling_defaults(args, meta.get("sampling") or {})
    random = [name for name, flag in (("DiT", meta.get("random_init")), ("VAE", vae_random)) if flag]
    if random:
        print(
            f"note: the {' and '.join(random)} weights are RANDOM (no trained checkpoint yet); "
            "the pipeline runs end to end but the video will not depict the prompt"
        )
    return dit, meta, vae, text, flow_cfg, device, dtype


def extent_notes(requests: list[GenRequest], meta: dict, vae) -> list[str]:
    """One line per request whose latent is larger, on some axis, than any the checkpoint was trained on."""
    trained = meta.get("trained_latent_max")
    if not trained:
        return []
    notes = []
    for r in requests:
        size = latent_shape(r.frames, r.height, r.width, vae.temporal_stride, vae.spatial_stride)
        axes = zip(("frames", "height", "width"), size, trained)
        over = [f"{axis} {got} > {most}" for axis, got, most in axes if got > most]
        if over:
            notes.append(
                f"note: {r.out}: latent {'x'.join(map(str, size))} is beyond what this checkpoint was "
                f"trained on ({', '.join(over)} latent cells); results there are unmeasured (the embedded "
                f"default, asked for twice its trained size, draws objects as token-sized fragments)"
            )
    return notes


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence writes to file descriptor 2 (FFmpeg's own log lines from decord / av on a bad file): the
    decode error is raised as an exception that names the file and the cause, printed as one line."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def read_init_frames(request: GenRequest):
    """The first `request.frames` frames of its init video, uint8 (F, H0, W0, 3); an image repeats.

    ValueError (data.decode.VideoDecodeError) naming the file when it cannot be decoded or is too short.
    """
    import numpy as np

    from data.decode import decode_frames, is_image, probe_video

    path = request.init_video
    with _quiet_native_stderr():
        if is_image(path):
            return np.repeat(decode_frames(path, [0]), request.frames, axis=0)
        info = probe_video(path)
        if info.num_frames < request.frames:
            raise ValueError(f"init video {str(path)!r} has {info.num_frames} frames; {request.out} asks for "
                             f"{request.frames} (give --frames <= {info.num_frames})")
        return decode_frames(path, list(range(request.frames)))


def init_pixels(frames, size: tuple[int, int, int], temporal_stride: int, spatial_stride: int):
    """uint8 (F, H0, W0, 3) -> float (3, 1 + (T - 1) * ts, h * ss, w * ss) in [-1, 1] for latent size
    (T, h, w): scaled (bilinear, antialiased) to cover that frame size, centre-cropped as the decoded
    video is, and the last frame repeated up to the VAE's whole temporal steps."""
    import torch
    import torch.nn.functional as F

    t, h, w = size
    height, width = h * spatial_stride, w * spatial_stride
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (F, 3, H0, W0)
    scale = max(height / video.shape[-2], width / video.shape[-1])
    cover = (max(height, math.ceil(video.shape[-2] * scale - 1e-6)),
             max(width, math.ceil(video.shape[-1] * scale - 1e-6)))
    if cover != tuple(video.shape[-2:]):
        video = F.interpolate(video, size=cover, mode="bilinear", antialias=True, align_corners=False)
    rows, cols = crop_box(cover, (height, width))
    video = video[:, :, rows, cols].div(127.5).sub(1.0).clamp(-1, 1)
    need = 1 + (t - 1) * temporal_stride
    if video.shape[0] < need:
        video = torch.cat([video, video[-1:].expand(need - video.shape[0], -1, -1, -1)])
    return video[:need].permute(1, 0, 2, 3)


def denoise(requests: list[GenRequest], args, dit, vae, text, flow_cfg, device, dtype, inits=None):
    """Encode the prompts (and init videos), pack all requests into shared denoising passes -> list of
    latents (C, T, h, w). `inits`: {request index: read_init_frames(...)} for video-to-video requests."""
    import torch

    from videodit.sampling import Request, sample

    prompts = [r.prompt for r in requests]
    negatives = [r.negative_prompt for r in requests]
    states, _ = text.encode(prompts + negatives)
    reqs = []
    for i, r in enumerate(requests):
        size = latent_shape(r.frames, r.height, r.width, vae.temporal_stride, vae.spatial_stride)
        init = None
        if inits and i in inits:
            pixels = init_pixels(inits[i], size, vae.temporal_stride, vae.spatial_stride)
            with torch.no_grad():
                init = vae.encode(pixels[None].to(device=device, dtype=next(vae.parameters()).dtype),
                                  chunk_frames=DECODE_CHUNK_FRAMES)[0].float()
        reqs.append(Request(size=size, text=states[i], seed=r.seed,
                            negative=states[len(requests) + i] if r.negative_prompt else None,
                            init=init, strength=r.strength if init is not None else 1.0))
    return sample(
        dit, reqs, steps=args.steps, sampler=args.sampler, guidance=args.cfg, flow_cfg=flow_cfg,
        device=device, dtype=dtype, token_budget=TOKEN_BUDGET,
        guidance_interval=parse_cfg_interval(args.cfg_interval), skip_guidance=args.skip_guidance,
        skip_blocks=parse_blocks(args.skip_blocks),
    )  # fmt: skip


def decode_to_mp4(latent, request: GenRequest, vae, fps: float) -> int:
    """Stream-decode one latent (C, T, h, w) and write its frames, cropped to H x W, to request.out."""
    import torch
    from einops import rearrange

    from videodit.mp4 import Mp4Writer

    z = latent[None].to(dtype=next(vae.parameters()).dtype)  # (1, C, T, h, w)
    with torch.no_grad(), Mp4Writer(request.out, fps, request.height, request.width) as writer:
        for chunk in vae.decode_stream(z, num_frames=request.frames, chunk_frames=DECODE_CHUNK_FRAMES):
            rows, cols = crop_box(chunk.shape[-2:], (request.height, request.width))
            pixels = chunk[0, :, :, rows, cols].float().clamp(-1, 1)  # (3, f, H, W)
            frames = ((pixels + 1) * 127.5).round().to(torch.uint8)
            writer.write(rearrange(frames, "c f h w -> f h w c").cpu())
        return writer.frames_written


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        requests = validate(args)
        # decoded before any model is loaded: an unreadable or too short init video costs no model load
        inits = {i: read_init_frames(r) for i, r in enumerate(requests) if r.init_video is not None}
    except ValueError as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2
    try:
        dit, meta, vae, text, flow_cfg, device, dtype = build(args)
        for note in extent_notes(requests, meta, vae):
            print(note)
        latents = denoise(requests, args, dit, vae, text, flow_cfg, device, dtype, inits)
        for request, latent in zip(requests, latents):
            n = decode_to_mp4(latent, request, vae, args.fps)
            print(f"wrote {n} frames of {request.height}x{request.width} to {request.out}")
    except ValueError as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
