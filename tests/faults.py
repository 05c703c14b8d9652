"""Fault injection for the save paths: crash (or SIGKILL) at the n-th file operation under a folder.

`crash_at(n, under)` patches the primitives every writer in the project goes through (file writes, renames,
symlinks, deletions); the n-th call that touches a path under `under` does not happen: a write leaves a
truncated file at its destination (a kill mid-write), then the process crashes, by raising `InjectedCrash`
(a BaseException, so no `except Exception` can swallow it) or, with `kill=True`, by SIGKILL (no cleanup
runs at all). Running an operation with n = 1, 2, ... until it completes visits every phase boundary.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import sys
from pathlib import Path

import torch


class InjectedCrash(BaseException):
    """The crash `crash_at` injects."""


class Counter:
    def __init__(self, n: int, under: Path, kill: bool, match: str = ""):
        self.n, self.under, self.kill, self.match = n, str(Path(under).resolve()), kill, match
        self.calls = 0
        self.crashed: str | None = None  # the operation that crashed

    def touches(self, *paths) -> bool:
        for p in paths:
            if isinstance(p, (str, os.PathLike)):
                full = os.path.abspath(os.fspath(p))
                if full.startswith(self.under) or os.path.realpath(full).startswith(self.under):
                    return True
        return False

    def step(self, what: str, *paths, partial: object = None) -> None:
        """Count one operation on `paths`; at the n-th, leave `partial` (a path) truncated and crash."""
        if not self.touches(*paths):
            return
        described = f"{what} {[os.fspath(p) for p in paths if isinstance(p, (str, os.PathLike))]}"
        if self.match not in described:
            return
        self.calls += 1
        if self.calls != self.n:
            return
        self.crashed = described
        if isinstance(partial, (str, os.PathLike)):
            with open(partial, "wb") as f:
                f.write(b"\x00partial")
        if self.kill:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedCrash(self.crashed)


# modules that imported safetensors' save_file by name
_SAVE_FILE_USERS = ("videodit.checkpoint", "vae3d.io", "data.precache")


@contextlib.contextmanager
def crash_at(n: int, under: str | Path, kill: bool = False, match: str = ""):
    """Crash at the n-th file operation under `under` whose description (operation and paths) contains
    `match` (see the module docstring); yields the Counter."""
    import importlib

    c = Counter(n, under, kill, match)
    real = {"replace": os.replace, "rename": os.rename, "symlink": os.symlink, "unlink": os.unlink,
            "rmtree": shutil.rmtree, "torch_save": torch.save, "write_text": pathlib.Path.write_text,
            "write_bytes": pathlib.Path.write_bytes}

    def replace(src, dst, *a, **k):
        c.step("os.replace", src, dst)
        return real["replace"](src, dst, *a, **k)

    def rename(src, dst, *a, **k):
        c.step("os.rename", src, dst)
        return real["rename"](src, dst, *a, **k)

    def symlink(src, dst, *a, **k):
        c.step("os.symlink", dst)
        return real["symlink"](src, dst, *a, **k)

    def unlink(path, *a, **k):
        c.step("os.unlink", path)
        return real["unlink"](path, *a, **k)

    def rmtree(path, *a, **k):
        c.step("shutil.rmtree", path)
        return real["rmtree"](path, *a, **k)

    def torch_save(obj, f, *a, **k):
        c.step("torch.save", f, partial=f)
        return real["torch_save"](obj, f, *a, **k)

    def write_text(self, *a, **k):
        c.step("Path.write_text", self, partial=self)
        return real["write_text"](self, *a, **k)

    def write_bytes(self, *a, **k):
        c.step("Path.write_bytes", self, partial=self)
        return real["write_bytes"](self, *a, **k)

    from videodit.mp4 import Mp4Writer

    real_mp4_write = Mp4Writer.write

    def mp4_write(self, frames):  # a video is streamed: a kill may come between two chunks
        c.step("Mp4Writer.write", self.path)
        return real_mp4_write(self, frames)

    patches = [(Mp4Writer, "write", mp4_write), (os, "replace", replace), (os, "rename", rename),
               (os, "symlink", symlink),
               (os, "unlink", unlink), (shutil, "rmtree", rmtree), (torch, "save", torch_save),
               (pathlib.Path, "write_text", write_text), (pathlib.Path, "write_bytes", write_bytes)]
    for name in _SAVE_FILE_USERS:
        module = importlib.import_module(name)
        real_save = module.save_file

        def save_file(tensors, filename, *a, _real=real_save, **k):
            c.step("save_file", filename, partial=filename)
            return _real(tensors, filename, *a, **k)

        patches.append((module, "save_file", save_file))
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    for obj, attr, fn in patches:
        setattr(obj, attr, fn)
    try:
        yield c
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def every_phase(operation, under: str | Path, limit: int = 300):
    """Run `operation()` inside `crash_at(n, under)` for n = 1, 2, ... until it completes without a crash,
    yielding (n, the operation that crashed) after each crash, so the caller checks what it left."""
    for n in range(1, limit + 1):
        try:
            with crash_at(n, under) as counter:
                operation()
        except InjectedCrash:
            yield n, counter.crashed
            continue
        return
    raise AssertionError(f"the operation still crashed after {limit} injected faults")
