"""Text-to-video (and video-to-video) from validated requests to mp4 files.

    pipe = load_pipeline("default")
    settings = sampling_settings(pipe.meta)                 # the checkpoint's steps, CFG, sampler ...
    latents = sample_latents(pipe, requests, settings)      # all requests packed into shared passes
    for request, latent in zip(requests, latents):
        decode_to_mp4(latent, request, pipe.vae, fps=16)    # streamed decode, cropped to the exact size

`generate.py` and the benchmarks are built on these functions. Requests (`videodit.video_request`) of
different shapes share every denoising forward pass (NaViT packing, `videodit.sampling.sample`), and a
request's result does not depend on what it was packed with. A request with an init video starts from its
VAE encoding noised to its strength (SDEdit); `videodit.video_reader.first_frames` reads that video.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from vae3d.atomic import temp_path
from vae3d.io import load_vae
from videodit import wan_generate
from videodit.checkpoint import load_dit
from videodit.config import from_dict
from videodit.flow import FlowConfig
from videodit.last_frame import takes_last_frame
from videodit.mp4 import Mp4Writer
from videodit.patchify import group_ends
from videodit.sampling import SAMPLERS, Request, sample
from videodit.text_encoder import TextEncoder
from videodit.video_request import VideoRequest, crop_box, latent_shape

TOKEN_BUDGET = 65536  # tokens of one denoising forward pass; a larger request runs alone
DECODE_CHUNK_FRAMES = 8  # pixel frames the VAE decodes per step (memory is bounded by this and the tile)
DECODE_BATCH_PIXELS = 512 * 512  # videos of one shape decode together up to this many pixels a frame in all
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class SamplingSettings:
    """How to denoise: steps, sampler and guidance (see `videodit.sampling.sample`)."""

    steps: int = 30
    cfg: float = 5.0  # classifier-free guidance scale; 1 = none
    sampler: str = "euler"
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # guide only at noise levels sigma in [lo, hi]
    skip_guidance: float = 0.0  # skip-layer guidance scale; 0 = off
    skip_blocks: tuple[int, ...] = ()  # DiT blocks skip-layer guidance skips

    def __post_init__(self):
        self.cfg_interval = tuple(float(v) for v in self.cfg_interval)
        self.skip_blocks = tuple(int(b) for b in self.skip_blocks)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (self.cfg >= 1.0 and math.isfinite(self.cfg)):
            raise ValueError(f"cfg must be >= 1 (1 = no guidance), got {self.cfg}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        lo, hi = self.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {self.cfg_interval}")
        if not (self.skip_guidance >= 0 and math.isfinite(self.skip_guidance)):
            raise ValueError(f"skip_guidance must be >= 0, got {self.skip_guidance}")


def sampling_settings(meta: dict, **given: Any) -> SamplingSettings:
    """The settings a request runs with: each one `given` (not None), else the checkpoint's recommendation
    (meta["sampling"]), else SamplingSettings' default."""
    known = SamplingSettings.__annotations__
    recommended = {k: v for k, v in (meta.get("sampling") or {}).items() if k in known}
    chosen = {k: v for k, v in given.items() if v is not None}
    return SamplingSettings(**{**recommended, **chosen})


@dataclass
class Pipeline:
    """A loaded DiT with its VAE and text encoder."""

    dit: torch.nn.Module
    meta: dict  # the DiT checkpoint's meta (VAE, text encoder, flow, sampling, trained extent)
    vae: torch.nn.Module
    text: TextEncoder
    flow_cfg: FlowConfig
    device: torch.device
    dtype: torch.dtype
    random: list[str] = field(default_factory=list)  # parts with random weights ("DiT", "VAE")
    scheduler: dict | None = None  # a WanPipeline folder's scheduler config (wan_generate); None else


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps' -> torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine")
    return resolved


def load_pipeline(ckpt: str = "default", vae: str | None = None, device: str = "auto",
                  dtype: str = "auto") -> Pipeline:
    """Load a DiT checkpoint folder ("default": the embedded model), the VAE it names (or `vae`, which
    must share its latent space) and its text encoder; or a diffusers WanPipeline folder with its own
    parts (videodit.wan_generate). dtype "auto": bfloat16 on CUDA, float32 else."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    dev = resolve_device(device)
    name = dtype if dtype != "auto" else ("bfloat16" if dev.type == "cuda" else "float32")
    torch_dtype = getattr(torch, name)
    if wan_generate.is_wan_folder(ckpt):
        dit, meta, decoder, text, scheduler = wan_generate.load_wan_parts(ckpt, vae, dev, torch_dtype)
        return Pipeline(dit, meta, decoder, text, FlowConfig(), dev, torch_dtype, scheduler=scheduler)
    dit, meta = load_dit(ckpt, device=dev, dtype=torch_dtype)
    decoder = load_vae(vae or meta["vae"], device=dev, dtype=torch_dtype)
    text = TextEncoder(meta["text_encoder"], device=dev, dtype=torch_dtype)
    flow_cfg = from_dict(FlowConfig, meta.get("flow") or {}, "meta.flow")
    if text.dim != dit.config.text_dim:
        raise ValueError(f"text encoder width {text.dim} != the DiT's text_dim {dit.config.text_dim}")
    if decoder.latent_channels != dit.config.in_channels:
        raise ValueError(
            f"VAE latent channels {decoder.latent_channels} != DiT in_channels {dit.config.in_channels}"
        )
    random = [part for part, flag in (("DiT", meta.get("random_init")),
                                      ("VAE", getattr(decoder, "is_random_init", False))) if flag]
    return Pipeline(dit, meta, decoder, text, flow_cfg, dev, torch_dtype, random)


def extent_notes(requests: list[VideoRequest], meta: dict, vae) -> list[str]:
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
                f"trained on ({', '.join(over)} latent cells); expect worse results there"
            )
    return notes


def init_pixels(frames: np.ndarray, size: tuple[int, int, int], temporal_stride: int,
                spatial_stride: int) -> torch.Tensor:
    """uint8 (F, H0, W0, 3) -> float (3, 1 + (T - 1) * ts, h * ss, w * ss) in [-1, 1] for latent size
    (T, h, w): scaled (bilinear, antialiased) to cover that frame size, centre-cropped as the decoded
    video is, and the last frame repeated up to the VAE's whole temporal steps."""
    t, h, w = size
    height, width = h * spatial_stride, w * spatial_stride
    need = 1 + (t - 1) * temporal_stride
    source = frames[:need]  # uint8 (F, H0, W0, 3); only a chunk at a time is float at its own size
    scale = max(height / source.shape[1], width / source.shape[2])
    cover = (max(height, math.ceil(source.shape[1] * scale - 1e-6)),
             max(width, math.ceil(source.shape[2] * scale - 1e-6)))
    rows, cols = crop_box(cover, (height, width))
    chunks = []
    for start in range(0, source.shape[0], DECODE_CHUNK_FRAMES):
        chunk = np.array(source[start: start + DECODE_CHUNK_FRAMES])  # a writable copy of f frames
        video = torch.from_numpy(chunk).permute(0, 3, 1, 2).float()  # (f, 3, H0, W0)
        if cover != tuple(video.shape[-2:]):  # -> (f, 3, cover)
            video = F.interpolate(video, size=cover, mode="bilinear", antialias=True, align_corners=False)
        chunks.append(video[:, :, rows, cols].div(127.5).sub(1.0).clamp(-1, 1))
    video = torch.cat(chunks)  # (F, 3, H, W)
    if video.shape[0] < need:
        video = torch.cat([video, video[-1:].expand(need - video.shape[0], -1, -1, -1)])
    return video[:need].permute(1, 0, 2, 3)  # (3, F', H, W)


def prefix_latent_frames(num_frames: int, size: tuple[int, int, int], dit_config, temporal_stride: int,
                         what: str) -> int:
    """Latent frames k of the prefix that `num_frames` given frames yield for a request of latent `size`: the
    most whose 1 + (k - 1) * ts frames are given and that end on a token group of the DiT. ValueError when
    the model cannot take any."""
    ends = group_ends(size[0], tuple(dit_config.patch), bool(getattr(dit_config, "causal_tubelet", False)))
    fitting = [k for k in ends if 1 + (k - 1) * temporal_stride <= num_frames]
    if not fitting:
        if size[0] < 2:
            raise ValueError(f"{what}: a request of {size[0]} latent frame leaves nothing to generate; ask "
                             f"for more --frames")
        raise ValueError(f"{what}: this checkpoint's tubelet {tuple(dit_config.patch)} does not give the "
                         f"first {num_frames} frame(s) tokens of their own (it needs model.causal_tubelet); "
                         f"it cannot condition on them")
    return max(fitting)


def conditioning_prefix(frames: np.ndarray, size: tuple[int, int, int], pipe: Pipeline,
                        what: str) -> torch.Tensor:
    """Conditioning frames uint8 (F, H0, W0, 3) -> the clean latent prefix (C, k, h, w) a request of latent
    `size` keeps: the longest 1 + (k - 1) * ts of the frames whose k latent frames end on a token group of
    the DiT (a causal tubelet takes latent frame 0 alone). ValueError when the model cannot take any."""
    vae = pipe.vae
    k = prefix_latent_frames(frames.shape[0], size, pipe.dit.config, vae.temporal_stride, what)
    pixels = init_pixels(frames, (k, size[1], size[2]), vae.temporal_stride, vae.spatial_stride)
    return vae.encode(pixels[None].to(device=pipe.device, dtype=next(vae.parameters()).dtype),
                      chunk_frames=DECODE_CHUNK_FRAMES)[0].float()  # (C, k, h, w)


def check_last_frame_count(size: tuple[int, int, int], pipe: Pipeline) -> None:
    """ValueError, naming the nearest frame counts that work, when a request of latent `size` cannot take a
    last image: its latent frames must end on a token group of the DiT (`videodit.last_frame`)."""
    patch = tuple(pipe.dit.config.patch)
    causal = bool(getattr(pipe.dit.config, "causal_tubelet", False))
    if takes_last_frame(size[0], patch, causal):
        return
    ts = pipe.vae.temporal_stride
    fits = [1 + ts * (T - 1) for T in range(2, size[0] + 2 * patch[0] + 1)
            if takes_last_frame(T, patch, causal)]  # frame counts whose latent takes one
    frames = 1 + (size[0] - 1) * ts
    near = {max([f for f in fits if f <= frames], default=fits[0]), min(f for f in fits if f > frames)}
    raise ValueError(f"a last image needs a frame count whose latent ends on a token group of this "
                     f"checkpoint (tubelet {patch}, causal tubelet {causal}): ask for --frames "
                     f"{' or '.join(map(str, sorted(near)))}")


def last_frame_latent(frames: np.ndarray, size: tuple[int, int, int], pipe: Pipeline) -> torch.Tensor:
    """The last image, uint8 (1, H0, W0, 3) -> its latent (C, 1, h, w) for a request of latent `size`: scaled
    to cover and centre-cropped like a first frame, and encoded alone (`videodit.last_frame`). ValueError
    when the request cannot take one (`check_last_frame_count`)."""
    check_last_frame_count(size, pipe)
    vae = pipe.vae
    pixels = init_pixels(frames[:1], (1, size[1], size[2]), vae.temporal_stride, vae.spatial_stride)
    return vae.encode(pixels[None].to(device=pipe.device, dtype=next(vae.parameters()).dtype))[0].float()


def task_warnings(requests: list[VideoRequest], meta: dict) -> list[str]:
    """A line per conditioning task the requests use that the checkpoint was not trained for."""
    trained = set(meta.get("tasks", ["t2v"]))
    used = ({"i2v" for r in requests if r.image is not None and r.last_image is None}
            | {"first_last" for r in requests if r.last_image is not None}
            | {"extend" for r in requests if r.extend})
    return [f"warning: this checkpoint was not trained for {task} (its tasks: {sorted(trained)}); "
            f"expect the given frames to be ignored or to clash" for task in sorted(used - trained)]


@torch.no_grad()
def latent_request(pipe: Pipeline, request: VideoRequest, text: torch.Tensor, negative: torch.Tensor,
                   init: np.ndarray | None = None, cond: np.ndarray | None = None,
                   last: np.ndarray | None = None) -> Request:
    """One request with its encoded prompt and negative prompt `(L, D_text)` -> the sampler's `Request`:
    its latent size, its init video's latent (`init` frames, SDEdit), its conditioning prefix (`cond`
    frames, see `conditioning_prefix`) and its last frame (`last`, see `last_frame_latent`)."""
    vae = pipe.vae
    ts, ss = vae.temporal_stride, vae.spatial_stride
    size = latent_shape(request.frames, request.height, request.width, ts, ss)
    latent = prefix = None
    if init is not None:
        pixels = init_pixels(init, size, ts, ss)
        latent = vae.encode(pixels[None].to(device=pipe.device, dtype=next(vae.parameters()).dtype),
                            chunk_frames=DECODE_CHUNK_FRAMES)[0].float()
    if cond is not None:
        prefix = conditioning_prefix(cond, size, pipe, str(request.image or request.extend))
    return Request(size=size, text=text, seed=request.seed,
                   negative=negative if request.negative_prompt else None, init=latent,
                   strength=request.strength if latent is not None else 1.0, prefix=prefix,
                   last=None if last is None else last_frame_latent(last, size, pipe))


@torch.no_grad()
def sample_latents(pipe: Pipeline, requests: list[VideoRequest], settings: SamplingSettings,
                   inits: dict[int, np.ndarray] | None = None, progress: bool = True,
                   conds: dict[int, np.ndarray] | None = None, token_budget: int | None = None,
                   lasts: dict[int, np.ndarray] | None = None) -> list[torch.Tensor]:
    """Encode the prompts (and init videos), pack all requests into shared denoising passes -> one latent
    (C, T, h, w) per request. `inits`: {request index: its init video's frames, uint8 (F, H0, W0, 3)
    (`videodit.video_reader.first_frames`)} for video-to-video; `conds`: {request index: its
    `videodit.video_reader.read_conditioning` frames} for image-to-video and extension (kept as given,
    see `conditioning_prefix`); `lasts`: {request index: its last image, uint8 (1, H0, W0, 3)} (first and
    last frame, see `last_frame_latent`). `token_budget`: the most tokens one packed pass may hold (default
    and cap: TOKEN_BUDGET; `videodit.budget.pass_token_budget` gives what fits the machine). A Wan pipeline
    samples as diffusers' WanPipeline does (`videodit.wan_generate.sample_latents_wan`)."""
    budget = min(TOKEN_BUDGET, token_budget or TOKEN_BUDGET)
    if pipe.scheduler is not None:
        return wan_generate.sample_latents_wan(pipe, requests, settings.steps, settings.cfg, budget, progress)
    states, _ = pipe.text.encode([r.prompt for r in requests] + [r.negative_prompt for r in requests])
    reqs = [latent_request(pipe, r, states[i], states[len(requests) + i], (inits or {}).get(i),
                           (conds or {}).get(i), (lasts or {}).get(i)) for i, r in enumerate(requests)]
    return sample(
        pipe.dit, reqs, steps=settings.steps, sampler=settings.sampler, guidance=settings.cfg,
        flow_cfg=pipe.flow_cfg, device=pipe.device, dtype=pipe.dtype,
        token_budget=budget, progress=progress, guidance_interval=settings.cfg_interval,
        skip_guidance=settings.skip_guidance, skip_blocks=settings.skip_blocks,
    )


@torch.no_grad()
def decode_to_mp4(latent: torch.Tensor, request: VideoRequest, vae, fps: float,
                  png: Path | None = None) -> int:
    """Stream-decode one latent (C, T, h, w) and write its frames, cropped to H x W, to request.out
    (atomically: the file appears complete or not at all) -> frames written. `png`: also write the first
    frame there as an image (for a 1-frame video)."""
    return decode_batch_to_mp4([latent], [request], vae, fps, [png])[0]


@torch.no_grad()
def decode_batch_to_mp4(latents: list[torch.Tensor], requests: list[VideoRequest], vae, fps: float,
                        pngs: list[Path | None] | None = None) -> list[int]:
    """`decode_to_mp4` for videos of one shape (equal latent sizes, frames, H and W) decoded as one batch:
    each decoder call runs once for all of them, a fraction of the cost of one call each on a CPU. ->
    frames written per request. Each file is written atomically."""
    shapes = {(tuple(z.shape), r.frames, r.height, r.width) for z, r in zip(latents, requests)}
    if len(shapes) != 1 or len(latents) != len(requests):
        raise ValueError(f"a decode batch needs videos of one shape, got {sorted(shapes)}")
    pngs = pngs or [None] * len(requests)
    first = requests[0]
    z = torch.stack(latents).to(dtype=next(vae.parameters()).dtype)  # (B, C, T, h, w)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(Mp4Writer(r.out, fps, r.height, r.width)) for r in requests]
        for chunk in vae.decode_stream(z, num_frames=first.frames, chunk_frames=DECODE_CHUNK_FRAMES):
            rows, cols = crop_box(chunk.shape[-2:], (first.height, first.width))
            pixels = chunk[:, :, :, rows, cols].float().clamp(-1, 1)  # (B, 3, f, H, W)
            frames = rearrange(((pixels + 1) * 127.5).round().to(torch.uint8), "b c f h w -> b f h w c").cpu()
            for writer, video, png in zip(writers, frames, pngs):
                if png is not None and writer.frames_written == 0:
                    write_png(png, video[0].numpy())
                writer.write(video)
    return [w.frames_written for w in writers]


def decode_groups(latents: list[torch.Tensor], requests: list[VideoRequest], vae) -> list[list[int]]:
    """Request indices grouped to decode together (`decode_batch_to_mp4`): equal shapes, at most
    DECODE_BATCH_PIXELS pixels a frame in all, so a batch's decode needs no more memory than one video's
    tiled decode. A VAE that does not stream (an adapted diffusers VAE) decodes one video at a time."""
    from vae3d.model import CausalVAE3D

    groups: dict[tuple, list[list[int]]] = {}
    for i, (z, r) in enumerate(zip(latents, requests)):
        key = (tuple(z.shape), r.frames, r.height, r.width)
        most = max(1, DECODE_BATCH_PIXELS // (r.height * r.width)) if isinstance(vae, CausalVAE3D) else 1
        runs = groups.setdefault(key, [[]])
        if len(runs[-1]) >= most:
            runs.append([])
        runs[-1].append(i)
    return [g for runs in groups.values() for g in runs]


def write_png(path: Path, frame: np.ndarray) -> None:
    """uint8 (H, W, 3) -> a PNG file, written atomically."""
    from PIL import Image

    with temp_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")


def generate(pipe: Pipeline, requests: list[VideoRequest], settings: SamplingSettings, fps: float = 16.0,
             inits: dict[int, np.ndarray] | None = None, progress: bool = True,
             conds: dict[int, np.ndarray] | None = None, token_budget: int | None = None,
             still_png: bool = False, lasts: dict[int, np.ndarray] | None = None) -> list[int]:
    """Sample every request together (in packed passes of at most `token_budget` tokens), then decode each
    to its mp4, videos of one shape in batches (`decode_groups`) -> frames written per request.
    `still_png`: a 1-frame request also gets `<out>.png`."""
    latents = sample_latents(pipe, requests, settings, inits, progress, conds, token_budget, lasts)
    written = [0] * len(requests)
    for group in decode_groups(latents, requests, pipe.vae):
        pngs = [requests[i].out.with_suffix(".png") if still_png and requests[i].frames == 1 else None
                for i in group]
        counts = decode_batch_to_mp4([latents[i] for i in group], [requests[i] for i in group], pipe.vae,
                                     fps, pngs)
        for i, n in zip(group, counts):
            written[i] = n
    return written
