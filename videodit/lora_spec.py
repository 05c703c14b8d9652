"""A `--lora PATH[:SCALE]` command-line value, parsed without importing torch (generate.py validates its
arguments before any heavy import)."""

from __future__ import annotations

from pathlib import Path


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """"PATH" or "PATH:SCALE" (scale defaults to 1) -> (path, scale). ValueError when the file does not
    exist or the scale is not finite."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path = spec
    if not Path(path).is_file():
        raise ValueError(f"LoRA file {path!r} does not exist (expected PATH or PATH:SCALE)")
    if scale != scale or abs(scale) == float("inf"):
        raise ValueError(f"LoRA scale {tail!r} of {spec!r} must be a finite number")
    return Path(path), scale
