"""What a user asks for, checked: `VideoRequest`s from a prompt or a prompts file, and their latent sizes.

Pure Python (no torch), so bad input is refused in milliseconds, before anything heavy is imported. Every
check raises ValueError with one line that names the bad value and the valid range.

A prompts file is JSONL, one request a line: {"prompt": str, "frames"?: int >= 1, "res"?: "HxW",
"seed"?: int >= 0, "negative_prompt"?: str, "init_video"?: path of an existing file, "strength"?: (0, 1]}.
Fields a line leaves out take the caller's defaults (the seed: default seed + line index).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from videodit.config import jsonl_objects

MAX_SIDE = 8192  # pixels
MAX_FRAMES = 2**20  # beyond any machine; the memory estimate (videodit.budget) refuses far smaller requests
FPS_RANGE = (0.01, 1000.0)  # frames per second an mp4 is written at
PROMPT_KEYS = {"prompt", "frames", "res", "seed", "negative_prompt", "init_video", "strength", "image",
               "last_image", "extend"}
DEFAULT_STRENGTH = 0.6  # strength of a request with an init video and no strength


@dataclass
class VideoRequest:
    """One video to make: exactly `frames` frames of `height` x `width` pixels written to `out`."""

    prompt: str
    frames: int  # F, exact
    height: int  # H, exact
    width: int  # W, exact
    seed: int
    negative_prompt: str
    out: Path
    init_video: Path | None = None  # video-to-video: start from this video's latent (SDEdit)
    strength: float = 1.0  # sigma the init latent is noised to; 1 = from noise
    image: Path | None = None  # image-to-video: the first frame (an image, or a video's first frame)
    extend: Path | None = None  # video extension: keep this clip's frames, generate the rest
    last_image: Path | None = None  # with `image`: the last frame (an image, or a video's first frame)


def parse_resolution(text: str) -> tuple[int, int]:
    """'720x1280' -> (720, 1280) = (height, width); ValueError naming the text otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"resolution {text!r} must look like HEIGHTxWIDTH, e.g. 720x1280")
    h, w = int(m.group(1)), int(m.group(2))
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"resolution {text!r}: height and width must be in [1, {MAX_SIDE}]")
    return h, w


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


def check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_frames(value, what: str = "frames") -> int:
    check_positive_int(value, what)
    if value > MAX_FRAMES:
        raise ValueError(f"{what} must be in [1, {MAX_FRAMES}], got {value}")
    return value


def check_fps(value, what: str = "fps") -> float:
    lo, hi = FPS_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{what} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def check_text(value, what: str = "prompt") -> str | None:
    """A prompt must be valid Unicode text (a command line in another encoding arrives with undecodable
    bytes as lone surrogates, which no tokenizer can take)."""
    if value is None:
        return None
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = str(value)[e.start:e.end].encode("utf-8", "surrogateescape")
        raise ValueError(f"{what} is not valid UTF-8 text (bytes {bad!r} at character {e.start}); give it "
                         f"in UTF-8") from None
    return value


def check_seed(value, what: str = "seed") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{what} must be an integer in [0, 2**63), got {value!r}")
    return value


def check_strength(value, what: str = "strength") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be a number in (0, 1] (1 = ignore the init video), got {value!r}")
    return float(value)


def check_init_video(value, what: str = "init video") -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ValueError(f"{what} must be a file path, got {value!r}")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist or is not a file")
    return path


def check_last_image(with_image: bool, frames: int | None, last: str, image: str, frames_name: str) -> None:
    """A last image needs a first one (first-and-last-frame) and more than one frame to reach it; the
    names are the caller's (a flag or a field)."""
    if not with_image:
        raise ValueError(f"{last} gives the last frame together with the first: give {image} as well")
    if frames is not None and frames < 2:
        raise ValueError(f"{last} gives the last frame: ask for {frames_name} > 1 (got {frames})")


def check_fields(item: dict, where: str = "") -> dict:
    """Check one request's fields (a prompts-file line, or a server request's body) -> the item unchanged.

    ValueError messages start with `where`. Paths (init_video, image, last_image, extend) must exist as
    given."""
    unknown = sorted(set(item) - PROMPT_KEYS)
    if unknown:
        raise ValueError(f"{where}unknown key(s) {unknown}; valid: {sorted(PROMPT_KEYS)}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}'prompt' must be a non-empty string")
    try:
        check_text(prompt, "prompt")
        if "frames" in item:
            check_frames(item["frames"], "frames")
        if "res" in item:
            if not isinstance(item["res"], str):
                raise ValueError(f"res must be a string like '720x1280', got {item['res']!r}")
            parse_resolution(item["res"])
        if "seed" in item:
            check_seed(item["seed"])
        if "negative_prompt" in item and not isinstance(item["negative_prompt"], str):
            raise ValueError("negative_prompt must be a string")
        check_text(item.get("negative_prompt"), "negative_prompt")
        if "init_video" in item:
            check_init_video(item["init_video"])
        if "strength" in item:
            check_strength(item["strength"])
        for key in ("image", "last_image", "extend"):
            if key in item:
                check_init_video(item[key], key)
        given = [k for k in ("init_video", "image", "extend") if k in item]
        if len(given) > 1:
            raise ValueError(f"give at most one of init_video, image, extend; got {given}")
        if "last_image" in item:
            check_last_image("image" in item, item.get("frames"), "last_image", "image", "frames")
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    return item


def parse_prompts_file(text: str, source: str = "prompts file") -> list[dict]:
    """JSONL text -> one dict per non-blank line with exactly the keys the line gave, validated.

    ValueError messages name `source:line`. Relative init_video paths are taken as given (from the working
    directory)."""
    items = []
    for where, item in jsonl_objects(text, source):
        check_fields(item, f"{where}: ")
        items.append(item)
    if not items:
        raise ValueError(f"{source} has no requests")
    return items


def requests_from_items(items: list[dict], folder: Path, frames: int, height: int, width: int, seed: int,
                        negative_prompt: str = "", init_video: Path | None = None,
                        strength: float | None = None, source: str = "prompts file") -> list[VideoRequest]:
    """Prompts-file items -> requests; what a line leaves out comes from the arguments (seed: seed + line
    index); line i is written to `folder/{i:04d}.mp4`."""
    if strength is not None and init_video is None and not any("init_video" in item for item in items):
        raise ValueError("--strength needs --init-video or requests with init_video")
    requests = []
    for i, item in enumerate(items):
        h, w = parse_resolution(item["res"]) if "res" in item else (height, width)
        line_init = Path(item["init_video"]) if "init_video" in item else init_video
        if line_init is None and "strength" in item:
            raise ValueError(f"{source}: request {i + 1} ({i:04d}.mp4) has a strength but no init_video "
                             f"(nor --init-video)")
        if line_init is not None and ("image" in item or "extend" in item):
            raise ValueError(f"{source}: request {i + 1} ({i:04d}.mp4) has an image or extend clip and an "
                             f"init video (--init-video): give one")
        line_strength = item.get("strength", strength)
        if line_init is None:
            line_strength = 1.0
        elif line_strength is None:
            line_strength = DEFAULT_STRENGTH
        requests.append(VideoRequest(
            prompt=item["prompt"], frames=item.get("frames", frames), height=h, width=w,
            seed=item.get("seed", seed + i), negative_prompt=item.get("negative_prompt", negative_prompt),
            out=folder / f"{i:04d}.mp4", init_video=line_init,
            strength=line_strength,
            image=Path(item["image"]) if "image" in item else None,
            extend=Path(item["extend"]) if "extend" in item else None,
            last_image=Path(item["last_image"]) if "last_image" in item else None,
        ))
    return requests


def default_out(prompt: str, seed: int, request: dict | None = None) -> Path:
    """outputs/<prompt slug>-<hash>.mp4: a slug of the prompt (any script) and a short hash of the whole
    `request` (default: the prompt and the seed), so only the same request gets the same name."""
    from videodit.outputs import request_name

    return request_name(prompt, {"prompt": prompt, "seed": seed, **(request or {})})
