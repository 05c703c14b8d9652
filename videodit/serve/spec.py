"""What a client asks for, checked: API fields (`seconds`, `size` as WIDTHxHEIGHT, ...) and prompts-file
fields (`frames`, `res` as HEIGHTxWIDTH, `seed`, ...) -> a `JobSpec`.

A JSON body carries typed values and is checked by the same rules as a prompts-file line
(`videodit.video_request.check_fields`); multipart form fields arrive as text (the `openai` SDK sends its
`extra_body` that way) and are read as the type the field has, then checked by the same rules.

Fields beyond a prompts-file line: `seconds` (becomes round(seconds * fps) frames), `size` (WIDTHxHEIGHT),
`model` (recorded; the server runs the one checkpoint it was started with), `input_reference` (the first
frame, i.e. the prompts-file `image`; with it, `last_image` gives the last frame), and the sampling settings
`steps`, `cfg`, `sampler`.

Every check raises ValueError with one line naming the field, the value and the valid range.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from videodit.video_request import (
    DEFAULT_STRENGTH,
    PROMPT_KEYS,
    VideoRequest,
    check_fields,
    check_last_image,
    check_positive_int,
    parse_resolution,
)

SAMPLERS = ("euler", "heun", "unipc")  # videodit.sampling.SAMPLERS (not imported: checks stay torch-free)
API_KEYS = {"seconds", "size", "model", "input_reference", "steps", "cfg", "sampler"}
VALID_KEYS = PROMPT_KEYS | API_KEYS
# files: an upload, or a path under the server's input folder
PATH_KEYS = ("init_video", "image", "last_image", "extend")
INT_KEYS = ("frames", "seed", "steps")
FLOAT_KEYS = ("strength", "cfg")
DEFAULT_SECONDS = 1.0
DEFAULT_SIZE = (128, 128)  # (height, width): the quick start's
MAX_SECONDS = 3600.0


@dataclass
class JobSpec:
    """One video job: everything needed to run it again after a restart (paths are absolute files the server
    owns or was allowed to read)."""

    prompt: str
    frames: int
    height: int
    width: int
    seed: int
    negative_prompt: str = ""
    steps: int | None = None  # None: the checkpoint's
    cfg: float | None = None
    sampler: str | None = None
    init_video: str | None = None  # video-to-video (SDEdit) from this file
    strength: float = 1.0
    image: str | None = None  # image-to-video: the first frame
    extend: str | None = None  # extension: keep this clip's frames
    last_image: str | None = None  # with `image`: the last frame
    model: str = ""
    seconds: str = ""  # as the API reports it
    remixed_from: str | None = None  # the job this one remixes

    @property
    def size(self) -> str:
        """WIDTHxHEIGHT, as the API has it."""
        return f"{self.width}x{self.height}"

    def video_request(self, out: Path) -> VideoRequest:
        def path(value: str | None) -> Path | None:
            return None if value is None else Path(value)

        return VideoRequest(self.prompt, self.frames, self.height, self.width, self.seed,
                            self.negative_prompt, out, path(self.init_video), self.strength, path(self.image),
                            path(self.extend), path(self.last_image))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_size(text) -> tuple[int, int]:
    """'1280x720' (WIDTHxHEIGHT, as the hosted API has it) -> (height, width) = (720, 1280)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text)) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"size {text!r} must look like WIDTHxHEIGHT, e.g. 1280x720")
    return parse_resolution(f"{m.group(2)}x{m.group(1)}")


def parse_seconds(value) -> float:
    """'4', '1.5' or a number -> seconds in (0, MAX_SECONDS]."""
    seconds = None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except ValueError:
            pass
    if seconds is None or not (0.0 < seconds <= MAX_SECONDS):
        raise ValueError(f"seconds must be a number in (0, {MAX_SECONDS:g}], got {value!r}")
    return seconds


def typed_form_fields(form: dict[str, str]) -> dict:
    """Form fields (all text) -> the types a JSON body has: INT_KEYS as int, FLOAT_KEYS as float."""
    out = dict(form)
    for key in INT_KEYS:
        if key in out:
            try:
                out[key] = int(out[key].strip())
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {out[key]!r}") from None
    for key in FLOAT_KEYS:
        if key in out:
            try:
                out[key] = float(out[key].strip())
            except ValueError:
                raise ValueError(f"{key} must be a number, got {out[key]!r}") from None
    return out


def job_spec(body: dict, fps: float, model: str, seed: int) -> JobSpec:
    """A request body (typed; paths already resolved to files the server may read) -> JobSpec.

    `fps`: the frame rate `seconds` is counted in; `model`: the name reported when the body gives none;
    `seed`: the seed when the body gives none."""
    unknown = sorted(set(body) - VALID_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; valid: {sorted(VALID_KEYS)}")
    for a, b in (("seconds", "frames"), ("size", "res"), ("input_reference", "image")):
        if a in body and b in body:
            raise ValueError(f"give {a} or {b}, not both")
    item = {k: v for k, v in body.items() if k in PROMPT_KEYS}
    if "input_reference" in body:
        item["image"] = body["input_reference"]
    if "last_image" in item and "image" not in item:  # named as this API names the first frame
        check_last_image(False, None, "last_image", "input_reference (or image)", "frames")
    check_fields(item)
    if "seconds" in body:
        seconds = parse_seconds(body["seconds"])
        frames = max(1, round(seconds * fps))
    else:
        frames = item.get("frames", max(1, round(DEFAULT_SECONDS * fps)))
        seconds = frames / fps
    height, width = (parse_size(body["size"]) if "size" in body
                     else parse_resolution(item["res"]) if "res" in item else DEFAULT_SIZE)
    steps = check_positive_int(body["steps"], "steps") if "steps" in body else None
    cfg = body.get("cfg")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float))
                            or not (cfg >= 1.0 and math.isfinite(cfg))):
        raise ValueError(f"cfg must be a number >= 1 (1 = no guidance), got {cfg!r}")
    sampler = body.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    model_name = body.get("model", model)
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model must be a non-empty string, got {model_name!r}")
    if "strength" in item and "init_video" not in item:
        raise ValueError("strength needs init_video (it says how far to move from that video)")
    if "image" in item and frames < 2:
        raise ValueError(f"an image gives the first frame: ask for more than 1 frame (got {frames})")
    if "last_image" in item:
        check_last_image("image" in item, frames, "last_image", "input_reference (or image)", "frames")
    strength = item.get("strength", DEFAULT_STRENGTH) if "init_video" in item else 1.0
    return JobSpec(
        prompt=item["prompt"], frames=frames, height=height, width=width, seed=item.get("seed", seed),
        negative_prompt=item.get("negative_prompt", ""), steps=steps, cfg=None if cfg is None else float(cfg),
        sampler=sampler, init_video=item.get("init_video"), strength=float(strength), image=item.get("image"),
        extend=item.get("extend"), last_image=item.get("last_image"), model=model_name,
        seconds=f"{seconds:g}",
    )


def confined_path(value, root: Path | None, key: str) -> str:
    """A client's path `value` -> the absolute path of that file under `root` (relative paths are taken from
    `root`). ValueError when the server reads no local files (`root` None) or the path leaves `root`."""
    if root is None:
        raise ValueError(f"{key}: this server reads no local files (start it with --input-dir DIR); upload "
                         f"the file instead")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a file path under the server's input folder, got {value!r}")
    base = root.resolve()
    path = (base / value).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{key} {value!r} is outside the server's input folder")
    return str(path)
