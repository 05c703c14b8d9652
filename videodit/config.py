"""Typed dataclass configs: YAML files of plain data plus type-checked `--set a.b=value` overrides.

A config is a tree of dataclasses. YAML files list only what differs from the defaults; unknown keys
anywhere are errors, and so are values of the wrong type. Each dataclass validates itself in
`__post_init__`, which `from_dict` and `apply_overrides` re-run after every change. `jsonl_objects` reads
the JSON Lines inputs (manifests, prompts files) with errors that name the line.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def jsonl_objects(text: str, source: str) -> Iterator[tuple[str, dict]]:
    """JSON Lines text -> (`source:line`, object) per non-blank line; ValueError naming the line for a line
    that is not JSON or not a JSON object."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
        yield where, item


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly convert) `value` against the annotation `tp`; raise ValueError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} does not match {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list,):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        if len(args) != 2:
            return dict(value)
        out = {}
        for k, v in value.items():  # JSON (a saved config, an override round trip) makes every key a string
            if args[0] is int and isinstance(k, str) and k.lstrip("-").isdigit():
                k = int(k)
            out[_coerce(k, args[0], f"{where} key")] = _coerce(v, args[1], f"{where}[{k!r}]")
        return out
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ValueError."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys of {cls.__name__}: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """Return a copy of `cfg` with each `a.b.c=value` applied (value parsed as YAML), type-checked."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: dict[str, Any] = data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            if i == len(parts) - 1:
                node[part] = _parse_scalar(raw)
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Defaults of `cls`, then the YAML file at `path` (if any), then `overrides`."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
        data = loaded
    cfg = _merge(cls, data)
    return apply_overrides(cfg, overrides or [])


def _merge(cls: type[C], data: dict[str, Any]) -> C:
    """Defaults of `cls` updated by the (partial) nested dict `data`."""
    base = to_dict(cls())

    def deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                deep_update(dst[k], v)
            else:
                dst[k] = v

    deep_update(base, data)
    return from_dict(cls, base)
