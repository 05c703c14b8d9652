"""Atomic writes: a reader (or a run killed at any instant) sees the old content or the new, never a mix.

A file is written under a hidden temporary name in the same folder, flushed to disk and renamed over its
target with `os.replace`.

A folder that may replace another (a model folder such as `<run>/ema`) is a pointer: a symlink from the
stable name to a versioned sibling folder. `replace_folder` writes a fresh `.<name>.tmp-<id>` folder, renames
it to `.<name>.v-<id>` once complete, then switches the symlink with `os.replace` (the commit point) and
removes older versions. So a `.v-` folder is always complete, and the stable name always resolves to a
complete folder. Readers need nothing special: the symlink resolves like a folder.

These helpers sit in vae3d, the lowest layer of the project, so that vae3d's own writers use them too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (best effort: not every file system lets a folder be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def temp_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` (same suffix, so writers that pick a format from the
    extension still work); when the block ends normally it is flushed and renamed over `path`. On an
    exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with temp_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=indent))


def _versions(folder: Path, kind: str) -> list[Path]:
    """Siblings `.<name>.<kind>-*` of `folder` (kind "v": complete versions, "tmp": unfinished writes)."""
    if not folder.parent.is_dir():
        return []
    return sorted(folder.parent.glob(f".{folder.name}.{kind}-*"))


def _point(folder: Path, target: Path) -> None:
    """Make `folder` a symlink to its sibling `target`, replacing what `folder` was in one `os.replace`."""
    link = folder.with_name(f".{folder.name}.link-{uuid.uuid4().hex[:8]}")
    os.symlink(target.name, link)
    os.replace(link, folder)
    _fsync_dir(folder.parent)


def recover_folder(folder: str | Path) -> Path | None:
    """Repair what a killed `replace_folder` can leave at `folder` -> the version it points to, or None.

    A stable name that is missing while complete versions exist (a kill while a plain folder was being
    turned into a pointer) is pointed at the newest version; unfinished `.tmp-` writes are removed."""
    folder = Path(folder)
    for tmp in _versions(folder, "tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    for link in folder.parent.glob(f".{folder.name}.link-*") if folder.parent.is_dir() else []:
        link.unlink(missing_ok=True)
    versions = _versions(folder, "v")
    if not folder.exists() and not folder.is_symlink() and versions:
        newest = max(versions, key=lambda p: p.stat().st_mtime_ns)
        _point(folder, newest)
    if folder.is_symlink():
        return folder.parent / os.readlink(folder)
    return None


@contextlib.contextmanager
def replace_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty folder to fill; when the block ends normally it becomes what `folder` resolves to
    (see the module docstring), in one atomic step. On an exception it is removed and `folder` is
    untouched. `folder` may be missing, a pointer written here before, or a plain folder (which is kept
    as the first version of the pointer)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    stamp = uuid.uuid4().hex[:12]
    tmp = folder.with_name(f".{folder.name}.tmp-{stamp}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        version = folder.with_name(f".{folder.name}.v-{stamp}")
        os.replace(tmp, version)  # complete from here on
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.is_dir() and not folder.is_symlink():  # a plain folder: keep it as a version, then point
        os.replace(folder, folder.with_name(f".{folder.name}.v-{uuid.uuid4().hex[:12]}"))
    _point(folder, version)  # the commit point
    for old in _versions(folder, "v"):
        if old.name != version.name:
            shutil.rmtree(old, ignore_errors=True)
