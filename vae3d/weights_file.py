"""A safetensors file's table of contents, read without its tensor data (and without torch).

A safetensors file is an 8-byte little-endian header length, a JSON header {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__"?: {...}}, then the data. `read_header` checks that the file is
exactly that (complete, not truncated, not garbage), so a broken weights file is refused in one line
before any loader touches it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MAX_HEADER = 100 * 2**20  # bytes; the format's own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of a safetensors file; ValueError naming the file and what is wrong
    when it is missing, empty, truncated or not a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist")
    size = path.stat().st_size
    bad = f"{str(path)!r} is not a complete safetensors file"
    if size < 8:
        raise ValueError(f"{bad} ({size} bytes)")
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > min(MAX_HEADER, size - 8):
            raise ValueError(f"{bad} (its header claims {length} bytes; the file has {size})")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{bad} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad} (its header is not a JSON object)")
    out, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(int(s) for s in entry["shape"]), \
                entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{bad} (entry {name!r} is malformed)") from None
        if dtype not in DTYPE_BYTES or stop - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ValueError(f"{bad} (entry {name!r}: {dtype} {list(shape)} does not match its "
                             f"{stop - begin} bytes)")
        out[name] = (dtype, shape)
        end = max(end, int(stop))
    if 8 + length + end != size:
        raise ValueError(f"{bad} (its tensors need {8 + length + end} bytes; the file has {size}: truncated "
                         f"or padded)")
    return out


def parameter_count(header: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """Elements of every tensor in a header from `read_header`."""
    return sum(math.prod(shape) for _, shape in header.values())


def mismatches(header: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, tuple[int, ...]],
               limit: int = 5) -> list[str]:
    """What differs between a file's tensors and a model's `{name: shape}`: missing, unexpected or
    differently shaped names (at most `limit` of them, described)."""
    out = [f"missing {k}" for k in expected if k not in header]
    out += [f"unexpected {k}" for k in header if k not in expected]
    out += [f"{k} is {list(header[k][1])}, the config makes {list(shape)}" for k, shape in expected.items()
            if k in header and tuple(header[k][1]) != tuple(shape)]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])
