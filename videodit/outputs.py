"""What a generation run writes beside each video, and how outputs are named and protected.

- `request_name(prompt, request)`: the default output name, a slug of the prompt (letters of any script)
  plus a short hash of the whole request, so different requests never share a name and the same request
  always gets the same one.
- `targets(out, frames)`: the files one video writes: the mp4, its sidecar `.json` and, for a 1-frame
  video, a `.png` of that frame.
- `existing_targets`: what of those already exists (refused unless the user asks to overwrite);
  `drop_descriptions` removes the old sidecars before replacing.
- `sidecar(...)` / `write_sidecar`: the full request, seed, sampler settings and the checkpoint's hash, so
  any output can be reproduced.

Pure Python and hashlib; files are written atomically (`vae3d.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

HASH_CHARS = 10  # hex digits of the request hash in a default name
SLUG_CHARS = 48


def slug(prompt: str) -> str:
    """Lower-case words of the prompt (letters and digits of any script) joined by '-', at most
    SLUG_CHARS characters; 'video' when nothing is left."""
    words = re.findall(r"[^\W_]+", prompt.casefold())
    return "-".join(words)[:SLUG_CHARS].strip("-") or "video"


def request_hash(request: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable request (keys sorted)."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


def request_name(prompt: str, request: dict[str, Any], folder: Path = Path("outputs")) -> Path:
    """`folder/<slug>-<hash>.mp4` for a request (a dict of everything that decides the video)."""
    return folder / f"{slug(prompt)}-{request_hash(request)}.mp4"


def targets(out: Path, frames: int) -> list[Path]:
    """Every file one video writes: the mp4, its sidecar .json and, for 1 frame, a .png."""
    files = [out, out.with_suffix(".json")]
    return files + [out.with_suffix(".png")] if frames == 1 else files


def existing_targets(outs: list[tuple[Path, int]]) -> list[Path]:
    """The files among `targets(out, frames)` of each (out, frames) that exist already."""
    return [p for out, frames in outs for p in targets(out, frames) if p.exists() or p.is_symlink()]


def drop_descriptions(outs: list[Path]) -> None:
    """Remove the sidecar .json and .png of videos about to be replaced (--overwrite), before any new video
    is put in place: a run killed between a new video and its new sidecar leaves the video without a
    description, never with the old video's. Temporaries a killed earlier write of these files left
    (hidden `.<name>.tmp-*`) go too."""
    for out in outs:
        for path in targets(out, 1)[1:]:
            path.unlink(missing_ok=True)
        for leftover in out.parent.glob(f".{out.stem}.tmp-*"):
            leftover.unlink(missing_ok=True)


def file_sha256(path: str | Path, chunk: int = 2**22) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(out: Path, record: dict[str, Any]) -> Path:
    """Write `record` as `out`'s sidecar .json (atomically) -> its path."""
    from vae3d.atomic import write_json

    return write_json(out.with_suffix(".json"), record)
