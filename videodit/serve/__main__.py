"""python -m videodit.serve: serve a checkpoint over HTTP (API + web page); see videodit.serve.

Every argument is checked before the model loads; bad input exits with one line on stderr (status 2).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

TOKEN_BUDGET = 65536  # videodit.pipeline.TOKEN_BUDGET (not imported: checks stay light)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class UsageError(ValueError):
    """Bad command-line input: one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m videodit.serve",
                description="Serve a videodit checkpoint: an API in the shape of the hosted video API (the "
                            "openai SDK's client.videos) and a web page.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                       "--api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--ckpt", default="default", help="DiT checkpoint folder (default: the embedded model)")
    p.add_argument("--vae", default=None, help="VAE to decode with (default: the checkpoint's own)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--out", type=Path, default=Path("outputs/served"),
                   help="folder for videos and job records; they survive a restart (default outputs/served)")
    p.add_argument("--input-dir", type=Path, default=None,
                   help="folder that paths in requests (init_video, image, extend) may name; without it the "
                        "server reads no local files for a client (uploads still work)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="key every API request must carry (Authorization: Bearer KEY)")
    key.add_argument("--api-key-file", type=Path, help="read the key from this file (not visible in ps)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate: `seconds` become frames at it, videos are written at it (default: the "
                        "checkpoint's meta fps, else 16)")
    p.add_argument("--max-queue", type=int, default=64, help="most jobs queued or running; more get 429")
    p.add_argument("--token-budget", type=int, default=TOKEN_BUDGET,
                   help=f"most tokens (CFG passes included) in one denoising step over all running jobs; a "
                        f"larger request is refused (default {TOKEN_BUDGET})")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest upload (default 64 MB)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="memory the up-front estimate may plan for (default: what the machine has free)")
    p.add_argument("--model-name", default=None, help="model name reported when a request names none")
    return p


def validate(args: argparse.Namespace) -> str | None:
    """Check everything before loading -> the API key (or None). ValueError with one line otherwise."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    key = args.api_key
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read --api-key-file {str(args.api_key_file)!r}: {e.strerror}") from None
    if key is not None and not key:
        raise ValueError("the API key must not be empty")
    if not is_loopback(args.host) and key is None:
        raise ValueError(f"--host {args.host} is reachable from other machines: give --api-key (or "
                         f"--api-key-file) so that requests must carry it")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", args.device):
        raise ValueError(f"--device {args.device!r} must be auto, cpu, cuda, cuda:N or mps")
    if args.fps is not None and not (args.fps > 0 and math.isfinite(args.fps)):
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    for name, value in (("--max-queue", args.max_queue), ("--token-budget", args.token_budget)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.max_memory_gb is not None and not args.max_memory_gb > 0:
        raise ValueError(f"--max-memory-gb must be > 0, got {args.max_memory_gb}")
    if args.input_dir is not None and not args.input_dir.is_dir():
        raise ValueError(f"--input-dir {str(args.input_dir)!r} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is not a folder")
    if args.ckpt != "default" and not (Path(args.ckpt) / "config.json").is_file():
        raise ValueError(f"--ckpt {args.ckpt!r} is not a checkpoint folder (no config.json)")
    return key


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        key = validate(args)
        import torch

        from videodit.pipeline import load_pipeline, resolve_device  # heavy imports from here on
        from videodit.serve.admission import memory_limit
        from videodit.serve.app import ServeConfig
        from videodit.serve.server import Server, bind

        bind(args.host, args.port).close()  # a taken port fails now, not after the model loads
        device = resolve_device(args.device)
        dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
        memory = memory_limit(args.ckpt, args.vae, getattr(torch, dtype), device, args.max_memory_gb)
        pipe = load_pipeline(args.ckpt, args.vae, args.device, args.dtype)
        name = args.model_name or ("videodit-default" if args.ckpt == "default" else Path(args.ckpt).name)
        config = ServeConfig(out=args.out, fps=args.fps or float(pipe.meta.get("fps", 16.0)), model_name=name,
                             input_dir=args.input_dir, api_key=key, max_queue=args.max_queue,
                             token_budget=args.token_budget, max_upload_mb=args.max_upload_mb, memory=memory)
        server = Server(pipe, config)
    except ValueError as e:
        print(f"videodit.serve: error: {e}", file=sys.stderr)
        return 2
    if pipe.random:
        print(f"note: the {' and '.join(pipe.random)} weights are RANDOM; videos will not depict prompts")
    store = server.store
    if store.requeued:
        print(f"re-queued {store.requeued} job(s) left unfinished by the last run in {config.out}")
    for line in store.unreadable:
        print(f"warning: skipped an unreadable job record: {line}")
    try:
        server.serve(args.host, args.port, on_ready=lambda message: print(message, flush=True))
    except ValueError as e:
        print(f"videodit.serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
