"""Memory budget of generation requests: their tokens, the peak resident memory they need, and whether
that fits the machine. Pure arithmetic on numbers (no torch, no argparse), so `generate.py` refuses a
request before any weights are read, and a server can admit requests with the same functions.

    fp = Footprint(weight_bytes=..., dit=DiTShape(...), vae=VAEShape(...))   # see videodit.model_folders
    tokens, need = request_tokens_and_bytes(64, 720, 1280, fp)
    check_fits(need, available_memory_bytes(None), "--frames 64 --res 720x1280")   # ValueError if not
    budget = pass_token_budget(fp, available_memory_bytes(None))  # tokens one packed pass may hold

Peak resident memory of a run is modelled as

    BASE_BYTES + weights + max(pass, decode, frames) + RETAINED * min(pass, decode)

of a denoising pass, the decoding of one video, and reading its init / conditioning frames:

- BASE_BYTES: the Python process with torch, diffusers, transformers and PyAV imported, plus what the
  first forward passes and the text encoder allocate once (measured on CPU, float32).
- weights: every parameter of the DiT, the VAE and the text encoder in the run's dtype.
- a denoising pass: every token the pass holds (a request's tokens once per classifier-free-guidance or
  skip-layer branch) times `DiTShape.token_bytes` (activations of one block, which free as the next runs).
  Attention is never materialised as an L x L matrix by the backends used (flash-style CPU SDPA, flash,
  xformers), so the pass is linear in its tokens.
- decoding: the largest streamed chunk of decoded frames (frames per chunk x pixels per spatial tile)
  times `VAEShape.pixel_bytes`, plus the blended full-frame chunk and its uint8 conversion.
- init / conditioning frames: the decoded uint8 frames at their own size, converted to float a chunk at a
  time, and the VAE encoding at the request's size.
- RETAINED: the share of the denoising pass's memory the allocator still holds when decoding starts.

The coefficients are measured for the shipped VAE and DiT architectures on CPU in float32 (within +-30%
of the measured peak RSS, see tests/test_budget.py); for other VAE families they are rough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2**30
BASE_BYTES = 470 * 2**20  # imports (~400 MiB) + first-pass, tokenizer and allocator overhead (measured)
DECODE_CHUNK_FRAMES = 8  # pixel frames the pipeline decodes per step (videodit.pipeline)
OUTPUT_PIXEL_BYTES = 40  # a decoded chunk at full frame size: float blend, crop/clamp, uint8 (per pixel)
RETAINED = 0.5  # of the denoising pass's peak, still resident while decoding (measured)


@dataclass(frozen=True)
class DiTShape:
    """What the estimate needs to know about the DiT."""

    hidden_size: int  # D
    mlp_width: int  # hidden width of each block's MLP
    patch: tuple[int, int, int]  # (pt, ph, pw)
    causal_tubelet: bool = False

    @property
    def token_bytes(self) -> int:
        """Peak activation bytes per token of a forward pass in float32 (16 D + 4 MLP-width floats:
        residual stream, norms, q/k/v with RoPE, attention output and the MLP's hidden layer, measured)."""
        return 4 * (16 * self.hidden_size + 4 * self.mlp_width)


@dataclass(frozen=True)
class VAEShape:
    """What the estimate needs to know about the VAE's decoder."""

    temporal_stride: int  # ts
    spatial_stride: int  # ss
    pixel_bytes: float  # activation bytes per pixel of a decoded chunk tile with several frames
    single_frame_pixel_bytes: float  # the same for a chunk of one frame (a 1-frame video, an image)
    tile: int = 512  # pixels: frames larger than this are decoded in tiles of this size; 0 = never tiled
    overlap: int = 64  # pixels of overlap between tiles
    streamed: bool = True  # False: the whole clip is decoded at once (adapted diffusers VAEs)


@dataclass(frozen=True)
class Footprint:
    """The loaded models as the estimate sees them."""

    weight_bytes: int  # parameters of the DiT, the VAE and the text encoder, in the run's dtype
    dit: DiTShape | None  # None: a checkpoint this module cannot size (its passes are not estimated)
    vae: VAEShape
    dtype_bytes: int = 4  # 4 for float32, 2 for bfloat16 / float16


def latent_size(frames: int, height: int, width: int, vae: VAEShape) -> tuple[int, int, int]:
    """Latent (T, h, w) of a request (as videodit.video_request.latent_shape)."""
    return (1 + math.ceil((frames - 1) / vae.temporal_stride), math.ceil(height / vae.spatial_stride),
            math.ceil(width / vae.spatial_stride))


def latent_tokens(size: tuple[int, int, int], dit: DiTShape) -> int:
    """Tokens of a latent (T, h, w) (as videodit.patchify.patch_grid: tails padded; a causal tubelet puts
    pt - 1 empty frames in front)."""
    (t, h, w), (pt, ph, pw) = size, dit.patch
    lead = pt - 1 if dit.causal_tubelet else 0
    return math.ceil((t + lead) / pt) * math.ceil(h / ph) * math.ceil(w / pw)


def _tile_pixels(side_latent: int, vae: VAEShape) -> int:
    """Pixels along one axis of the largest spatial tile (vae3d's tile_spans: fewest equal spans)."""
    ss = vae.spatial_stride
    if not vae.tile or side_latent * ss <= vae.tile:
        return side_latent * ss
    tile, overlap = vae.tile // ss, vae.overlap // ss
    n = math.ceil((side_latent - overlap) / (tile - overlap))
    return math.ceil((side_latent + (n - 1) * overlap) / n) * ss


def decode_bytes(frames: int, height: int, width: int, vae: VAEShape, dtype_bytes: int = 4) -> int:
    """Peak bytes of decoding one video of `frames` x `height` x `width` (streamed in chunks, tiled)."""
    t, h, w = latent_size(frames, height, width, vae)
    if vae.streamed:  # the first chunk decodes 1 + ts (steps - 1) frames, later ones ts * steps
        steps = max(1, DECODE_CHUNK_FRAMES // vae.temporal_stride)
        chunk = min(frames, vae.temporal_stride * steps)
    else:
        chunk = frames
    full = h * vae.spatial_stride * w * vae.spatial_stride
    tile = _tile_pixels(h, vae) * _tile_pixels(w, vae)
    per_pixel = vae.single_frame_pixel_bytes if chunk == 1 else vae.pixel_bytes
    scale = dtype_bytes / 4
    return int(chunk * (tile * per_pixel * scale + full * OUTPUT_PIXEL_BYTES))


def frames_bytes(frames: int, source_height: int, source_width: int, height: int, width: int,
                 vae: VAEShape, dtype_bytes: int = 4) -> int:
    """Peak bytes of reading `frames` init or conditioning frames of a source_height x source_width file
    for a `height` x `width` request: the uint8 frames, one chunk of them as float, the frames at the
    request's size as float, and their VAE encoding (costed like decoding)."""
    uint8 = frames * source_height * source_width * 3
    chunk = min(frames, DECODE_CHUNK_FRAMES) * source_height * source_width * 3 * 4 * 2
    resized = frames * height * width * 3 * 4
    return uint8 + chunk + resized + decode_bytes(frames, height, width, vae, dtype_bytes)


def pass_bytes(tokens: int, fp: Footprint) -> int:
    """Activation bytes of one denoising forward pass over `tokens` packed tokens."""
    if fp.dit is None:
        return 0
    return int(tokens * fp.dit.token_bytes * fp.dtype_bytes / 4)


def request_tokens_and_bytes(frames: int, height: int, width: int, fp: Footprint, guided: bool = True,
                             skip_pass: bool = False,
                             source_size: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """(tokens the request adds to every denoising pass, peak resident bytes of running it alone).

    `guided`: classifier-free guidance doubles the tokens, `skip_pass` (skip-layer guidance) adds one more
    copy; `source_size`: (frames, height, width) of an init video / conditioning clip that is read."""
    size = latent_size(frames, height, width, fp.vae)
    tokens = (latent_tokens(size, fp.dit) if fp.dit else 0) * (1 + int(guided) + int(skip_pass))
    passing, decoding = pass_bytes(tokens, fp), decode_bytes(frames, height, width, fp.vae, fp.dtype_bytes)
    work = max(passing, decoding) + int(RETAINED * min(passing, decoding))
    if source_size is not None:
        n, sh, sw = source_size
        work = max(work, frames_bytes(n, sh, sw, height, width, fp.vae, fp.dtype_bytes))
    return tokens, BASE_BYTES + fp.weight_bytes + work


def pass_token_budget(fp: Footprint, available: int) -> int:
    """The most tokens one packed denoising pass may hold within `available` bytes (>= 1)."""
    if fp.dit is None:
        return 2**62
    free = available - BASE_BYTES - fp.weight_bytes
    return max(1, free * 4 // (fp.dit.token_bytes * fp.dtype_bytes))


def available_memory_bytes(max_memory_gb: float | None = None) -> int:
    """Bytes a run may use: `max_memory_gb` GiB when given, else the kernel's MemAvailable (free memory
    plus what it can reclaim, from /proc/meminfo). ValueError for a bad `max_memory_gb`, or when
    /proc/meminfo cannot be read and no limit is given."""
    if max_memory_gb is not None:
        if not (isinstance(max_memory_gb, (int, float)) and math.isfinite(max_memory_gb)
                and max_memory_gb > 0):
            raise ValueError(f"max memory must be a number of GiB > 0, got {max_memory_gb!r}")
        return int(max_memory_gb * GIB)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    raise ValueError("cannot read MemAvailable from /proc/meminfo on this system; give --max-memory-gb")


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def check_fits(needed: int, available: int, what: str) -> None:
    """ValueError with the numbers when `needed` bytes exceed `available` bytes; `what` names the request."""
    if needed > available:
        raise ValueError(f"{what} needs about {gib(needed)} of memory, more than the {gib(available)} "
                         f"available (MemAvailable, or --max-memory-gb); ask for fewer frames or a smaller "
                         f"resolution")
