"""Mix several manifests into one, each repeated a whole number of times, shuffled for a seed.

    python -m data.mix --out runs/vae_train.jsonl runs/world/train.jsonl runs/natural/train.jsonl:3

`M:k` repeats manifest M k times (default 1), to weight small sources up. Paths are rewritten relative
to the output manifest, so the result works from any working directory.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from data.manifest import ClipEntry, read_manifest, write_manifest


def parse_source(spec: str) -> tuple[str, int]:
    """'path[:repeat]' -> (path, repeat); repeat must be a positive integer."""
    path, sep, repeat = spec.rpartition(":")
    if not sep or not repeat.isdigit():
        return spec, 1
    if int(repeat) < 1:
        raise ValueError(f"source {spec!r}: repeat must be >= 1, got {repeat}")
    return path, int(repeat)


def mix(sources: list[tuple[str, int]], seed: int = 0) -> list[ClipEntry]:
    """Entries of every source, each repeated as asked, in one seeded shuffle."""
    if not sources:
        raise ValueError("mix needs at least one source manifest")
    entries = [e for path, repeat in sources for e in read_manifest(path) * repeat]
    random.Random(seed).shuffle(entries)
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="manifest[:repeat]")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        entries = mix([parse_source(s) for s in args.sources], args.seed)
    except ValueError as e:
        parser.error(str(e))
    write_manifest(entries, Path(args.out))
    print(f"wrote {len(entries)} clips to {args.out}")


if __name__ == "__main__":
    main()
