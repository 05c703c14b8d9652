"""Latent cache: encode a manifest's clips (VAE) and captions (text encoder) once, train from the cache.

    python -m data.precache --manifest M --out DIR [--vae default] [--text-encoder default]
    python -m data.precache --manifest M --out DIR --wan WAN_PIPELINE_FOLDER    (a Wan model's cache)
    deepspeed --num_accelerators N data/precache.py ...   (ranks split the shards)

Layout of DIR:
    shard_00000.safetensors   tensors `latent.<i>` (c, T, h, w) and `text.<i>` (L, D) for manifest rows i
    shard_00000.json          that shard's sample list (written last: its presence marks the shard done)
    index.json                settings + every sample (path, caption, shard, latent shape, text length)

Shard k holds manifest rows [k*S, (k+1)*S); rank r encodes the shards k with k % world_size == r.
A Wan cache (`--wan FOLDER`: the pipeline's vae/ through vae3d's adapter and its UMT5 encoder, or
`--vae FOLDER/vae --text-encoder FOLDER`) stores each caption's real-token states unpadded, encoded as Wan
encodes them (videodit.wan_text), and the encoding of "" in empty_text.safetensors; training pads them to
512 rows when it loads them.

A rerun skips finished shards (resumable). Each clip's frames and resolution come from the same NaViT
sampling as on-the-fly training with epoch 0, so the cache equals on-the-fly encoding.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from data.dataset import VideoDataset
from data.manifest import read_manifest
from data.sampling import SamplingConfig, latent_token_count

log = logging.getLogger(__name__)
INDEX = "index.json"
EMPTY_TEXT = "empty_text.safetensors"  # a Wan cache's encoding of "" (unpadded), for text dropout


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


@torch.no_grad()
def encode_shard(ds: VideoDataset, rows: list[int], vae, text_encoder, out: Path, k: int,
                 dtype: torch.dtype) -> dict:
    """Encode manifest rows into shard k (atomically) -> the shard's JSON record."""
    tensors, samples, skipped = {}, [], []
    device = next(vae.parameters()).device
    for i in rows:
        sample = ds.load(i)
        if sample is None:
            skipped.append(ds.entries[i].path)
            continue
        latent = vae.encode(sample["video"][None].to(device))[0]  # (c, T, h, w)
        text = text_encoder.encode([sample["caption"]])[0][0]  # (L, D)
        tensors[f"latent.{i}"] = latent.to(dtype).contiguous().cpu()
        tensors[f"text.{i}"] = text.to(dtype).contiguous().cpu()
        samples.append({"index": i, "path": sample["path"], "caption": sample["caption"],
                        "shard": shard_name(k), "latent_shape": list(latent.shape), "text_len": len(text)})
    target = out / f"{shard_name(k)}.safetensors"
    tmp = out / f".{target.name}.tmp-{os.getpid()}"
    save_file(tensors or {"empty": torch.zeros(0)}, str(tmp))
    os.replace(tmp, target)
    record = {"shard": shard_name(k), "rows": rows, "samples": samples, "skipped": skipped}
    _write_json(out / f"{shard_name(k)}.json", record)
    return record


def write_index(out: Path, settings: dict, num_shards: int) -> Path | None:
    """Merge every shard's record into index.json once all shards are done (else None)."""
    records = []
    for k in range(num_shards):
        p = out / f"{shard_name(k)}.json"
        if not p.is_file():
            return None
        records.append(json.loads(p.read_text()))
    index = {**settings, "num_shards": num_shards,
             "samples": [s for r in records for s in r["samples"]],
             "skipped": [s for r in records for s in r["skipped"]]}
    _write_json(out / INDEX, index)
    return out / INDEX


def precache(manifest: str | Path, out: str | Path, vae="default", text_encoder="default",
             sampling: SamplingConfig | None = None, seed: int = 0, shard_size: int = 64,
             rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, wan: bool = False) -> Path | None:
    """Encode this rank's shards of `manifest` into `out`; returns index.json's path once complete.

    `vae` / `text_encoder`: a name/path (loaded here) or an already-loaded model. `wan`: the text encoder
    is a Wan model's UMT5 (a path: a WanPipeline folder or its text_encoder/), encoded as Wan encodes
    prompts; the cache also stores the encoding of "" (EMPTY_TEXT).
    `sampling`: its temporal/spatial strides are replaced by the VAE's own.
    """
    from vae3d import io as vae3d_io
    from videodit.text_encoder import TextEncoder

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae_name = vae if isinstance(vae, (str, Path)) else "given"
    te_name = text_encoder if isinstance(text_encoder, (str, Path)) else getattr(text_encoder, "path", "?")
    if isinstance(vae, (str, Path)):
        vae = vae3d_io.load_vae(str(vae), device=device)
    if isinstance(text_encoder, (str, Path)):
        if wan:
            from videodit.wan_finetune import text_encoder_for

            text_encoder = text_encoder_for(text_encoder, device=device)
        else:
            text_encoder = TextEncoder(str(text_encoder), device=device)
    if wan and not (out / EMPTY_TEXT).is_file():
        empty = text_encoder.encode([""])[0][0]  # (L, D) real-token states of ""
        tmp = out / f".{EMPTY_TEXT}.tmp-{os.getpid()}"
        save_file({"text": empty.to(dtype).contiguous().cpu()}, str(tmp))
        os.replace(tmp, out / EMPTY_TEXT)
    sampling = sampling or SamplingConfig()
    sampling = SamplingConfig(**{**asdict(sampling), "temporal_stride": vae.temporal_stride,
                                 "spatial_stride": vae.spatial_stride})
    ds = VideoDataset(read_manifest(manifest), sampling, seed=seed, epoch=0, shuffle=False)
    n = len(ds.entries)
    num_shards = -(-n // shard_size)
    settings = {"version": 1, "manifest": str(manifest), "vae": str(vae_name), "text_encoder": str(te_name),
                "sampling": asdict(sampling), "seed": seed, "shard_size": shard_size, "num_entries": n,
                "dtype": str(dtype).removeprefix("torch."), "wan": wan}
    for k in range(rank, num_shards, world_size):
        if (out / f"{shard_name(k)}.json").is_file():
            log.info("shard %s already done, skipping", shard_name(k))
            continue
        rows = list(range(k * shard_size, min(n, (k + 1) * shard_size)))
        rec = encode_shard(ds, rows, vae, text_encoder, out, k, dtype)
        log.info("wrote %s: %d clips, %d skipped", shard_name(k), len(rec["samples"]), len(rec["skipped"]))
    return write_index(out, settings, num_shards)


class LatentCache:
    """Loader source over a precache folder: sample j = index.json's j-th sample (unreadable ones are
    already left out). Yields {"latent": (c, T, h, w), "text": (L, D), "caption", "path", "index"}."""

    def __init__(self, folder: str | Path, patch: tuple[int, int, int] = (1, 2, 2), causal: bool = False):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise ValueError(f"latent cache {str(self.folder)!r} has no {INDEX}; run python -m data.precache")
        self.index = json.loads(index_path.read_text())
        self.samples = self.index["samples"]
        self.patch, self.causal = tuple(patch), causal
        self.stats = {"skipped": len(self.index.get("skipped", [])), "yielded": 0}
        self._open: tuple[str, object] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def empty_text(folder: str | Path) -> torch.Tensor:
        """A Wan cache's padded encoding of "" (512, D) float32 (`precache(..., wan=True)` stores it)."""
        from videodit.wan_text import TEXT_LEN, pad_text

        path = Path(folder) / EMPTY_TEXT
        if not path.is_file():
            raise ValueError(f"latent cache {str(folder)!r} has no {EMPTY_TEXT} (the encoding of \"\" a Wan "
                             "model trains with for guidance); rebuild it with python -m data.precache --wan")
        with safe_open(str(path), framework="pt") as f:
            return pad_text(f.get_tensor("text").float(), TEXT_LEN)

    def set_epoch(self, epoch: int) -> None:  # the cache holds one fixed crop per clip
        pass

    def token_length(self, j: int) -> int:
        return latent_token_count(tuple(self.samples[j]["latent_shape"]), self.patch, self.causal)

    def _handle(self, shard: str):
        if self._open is None or self._open[0] != shard:
            self._open = (shard, safe_open(str(self.folder / f"{shard}.safetensors"), framework="pt"))
        return self._open[1]

    def load(self, j: int) -> dict:
        s = self.samples[j]
        f = self._handle(s["shard"])
        self.stats["yielded"] += 1
        return {"latent": f.get_tensor(f"latent.{s['index']}").float(),
                "text": f.get_tensor(f"text.{s['index']}").float(),
                "caption": s["caption"], "path": s["path"], "index": j}


def main(argv: list[str] | None = None) -> None:
    from videodit.distributed import env_rank_world

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="CSV / JSONL manifest or a folder of clips + .txt")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--vae", default="default")
    p.add_argument("--text-encoder", default="default",
                   help="a text encoder folder; a WanPipeline folder encodes as Wan does (see --wan)")
    p.add_argument("--wan", default=None, metavar="FOLDER",
                   help="a diffusers WanPipeline folder: its vae/ and UMT5 text encoder, Wan's text handling")
    p.add_argument("--min-tokens", type=int, default=SamplingConfig.min_tokens)
    p.add_argument("--max-tokens", type=int, default=SamplingConfig.max_tokens)
    p.add_argument("--max-frames", type=int, default=SamplingConfig.max_frames)
    p.add_argument("--min-frames", type=int, default=SamplingConfig.min_frames,
                   help="shortest frame count taken from a clip (clips shorter than this are taken whole); "
                        "set it to --max-frames to keep whole clips when captions describe the whole clip")
    p.add_argument("--target-fps", type=float, default=SamplingConfig.target_fps)
    p.add_argument("--patch", type=int, nargs=3, default=list(SamplingConfig.patch))
    p.add_argument("--causal-tubelet", action="store_true",
                   help="count tokens for a DiT with model.causal_tubelet (latent frame 0 alone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rank, world = env_rank_world()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    sampling = SamplingConfig(min_tokens=args.min_tokens, max_tokens=args.max_tokens,
                              max_frames=args.max_frames, min_frames=args.min_frames,
                              target_fps=args.target_fps, patch=tuple(args.patch), causal=args.causal_tubelet)
    vae, text_encoder, wan = args.vae, args.text_encoder, False
    if args.wan is not None:
        if not (Path(args.wan) / "model_index.json").is_file():
            p.error(f"--wan {args.wan!r} is not a diffusers pipeline folder (no model_index.json)")
        vae = str(Path(args.wan) / "vae") if vae == "default" else vae
        text_encoder, wan = args.wan, True
    else:  # a pipeline folder, or a pipeline's text_encoder/, is a Wan text encoder
        folder = Path(text_encoder)
        wan = (folder / "model_index.json").is_file() or (
            folder.name == "text_encoder" and (folder.parent / "model_index.json").is_file())
    index = precache(args.manifest, args.out, vae, text_encoder, sampling, args.seed,
                     args.shard_size, rank, world, device, getattr(torch, args.dtype), wan)
    if index is not None:
        print(f"latent cache complete: {index}")
    else:
        print(f"rank {rank}: my shards are done; index.json is written by the last rank to finish")


if __name__ == "__main__":
    main()
