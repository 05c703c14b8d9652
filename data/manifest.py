"""Manifests: the list of training clips with their captions.

Three forms are accepted:
- CSV with a header row: columns `path`, `caption`, optional `start`, `end` (seconds), `fps`.
- JSONL: one object per line with the same keys.
- A folder: every video/image file in it (recursively) with a `.txt` caption of the same stem beside it.

Relative paths resolve against the manifest's folder. A manifest missing its `path` or `caption`
columns is refused with a ValueError naming what is missing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from videodit.config import jsonl_objects

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REQUIRED = ("path", "caption")


@dataclass(frozen=True)
class ClipEntry:
    """One manifest row. `start`/`end` in seconds (None = whole clip); `fps` overrides the file's rate."""

    path: str
    caption: str
    start: float | None = None
    end: float | None = None
    fps: float | None = None

    def __post_init__(self):
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"{self.path}: end {self.end} must be after start {self.start}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"{self.path}: fps must be > 0, got {self.fps}")


def _opt_float(value, name: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column {name!r} must be a number, got {value!r}") from None


def _entry(row: dict, root: Path, where: str) -> ClipEntry:
    path = str(row["path"]).strip()
    if not path:
        raise ValueError(f"{where}: empty 'path'")
    full = Path(path) if Path(path).is_absolute() else root / path
    return ClipEntry(
        path=str(full),
        caption=str(row["caption"] if row["caption"] is not None else ""),
        start=_opt_float(row.get("start"), "start", where),
        end=_opt_float(row.get("end"), "end", where),
        fps=_opt_float(row.get("fps"), "fps", where),
    )


def _check_columns(columns, source: str) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ValueError(
            f"manifest {source} is missing required column(s) {', '.join(repr(m) for m in missing)}; "
            f"found {sorted(columns)}"
        )


def _read_csv(path: Path) -> list[ClipEntry]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_columns(reader.fieldnames or [], str(path))
        return [_entry(row, path.parent, f"{path}:{i + 2}") for i, row in enumerate(reader)]


def _read_jsonl(path: Path) -> list[ClipEntry]:
    entries = []
    for where, row in jsonl_objects(path.read_text(encoding="utf-8"), str(path)):
        _check_columns(row.keys(), where)
        entries.append(_entry(row, path.parent, where))
    return entries


def _read_folder(folder: Path) -> list[ClipEntry]:
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in VIDEO_EXTS + IMAGE_EXTS or not p.is_file():
            continue
        txt = p.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
        if caption is None:
            raise ValueError(f"manifest folder {folder}: {p.name} has no caption file {txt.name}")
        entries.append(ClipEntry(path=str(p), caption=caption))
    return entries


def read_manifest(path: str | Path) -> list[ClipEntry]:
    """Read a CSV/JSONL manifest or a folder of clips with `.txt` captions -> list of ClipEntry.

    Raises ValueError for a missing file, unknown format, missing columns or an empty manifest.
    """
    path = Path(path)
    if path.is_dir():
        entries = _read_folder(path)
    elif not path.is_file():
        raise ValueError(f"manifest {str(path)!r} does not exist")
    elif path.suffix.lower() == ".csv":
        entries = _read_csv(path)
    elif path.suffix.lower() in (".jsonl", ".json"):
        entries = _read_jsonl(path)
    else:
        raise ValueError(f"manifest {str(path)!r}: unknown format {path.suffix!r}; use csv, jsonl, a folder")
    if not entries:
        raise ValueError(f"manifest {str(path)!r} lists no clips")
    return entries


def write_manifest(entries: list[ClipEntry], path: str | Path) -> Path:
    """Write entries as JSONL (paths relative to the manifest's folder when possible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in entries:
        p = Path(e.path)
        try:
            rel = str(p.resolve().relative_to(path.parent.resolve()))
        except ValueError:
            rel = str(p)
        row = {"path": rel, "caption": e.caption}
        row.update({k: getattr(e, k) for k in ("start", "end", "fps") if getattr(e, k) is not None})
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
