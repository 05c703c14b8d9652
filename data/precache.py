"""Latent cache: encode a manifest's clips (VAE) and captions (text encoder) once, train from the cache.

    python -m data.precache --manifest M --out DIR [--vae default] [--text-encoder default]
    python -m data.precache --manifest M --out DIR --wan WAN_PIPELINE_FOLDER    (a Wan model's cache)
    deepspeed --num_accelerators N data/precache.py ...   (ranks split the shards)

Layout of DIR:
    shard_00000.safetensors   tensors `latent.<i>` (c, T, h, w) and `text.<i>` (L, D) for manifest rows i,
                              and with --last-frame `last.<i>` (c, 1, h, w): the clip's last frame encoded
                              alone (first-and-last-frame training, `videodit.last_frame`)
    shard_00000.json          that shard's sample list and settings hash (written last: it marks the shard
                              done)
    index.json                settings + every sample (path, caption, shard, latent shape, text length)

Shard k holds manifest rows [k*S, (k+1)*S); rank r encodes the shards k with k % world_size == r.
A Wan cache (`--wan FOLDER`: the pipeline's vae/ through vae3d's adapter and its UMT5 encoder, or
`--vae FOLDER/vae --text-encoder FOLDER`) stores each caption's real-token states unpadded, encoded as Wan
encodes them (videodit.wan_text), and the encoding of "" in empty_text.safetensors; training pads them to
512 rows when it loads them.

A rerun skips finished shards (resumable). Each clip's frames and resolution come from the same
NaViT sampling as on-the-fly training with epoch 0, so the cache equals on-the-fly encoding.

Every file is written atomically (`vae3d.atomic`). The settings that decide a cache's content (the
manifest's rows, the VAE's and the text encoder's weights, the clip sampling, the seed, the shard size
and dtype) are recorded, hashed, in every shard's record and in the index. A rerun with other settings
into a folder that holds a cache is refused, naming what differs; `--rebuild` (`rebuild=True`) replaces
that cache instead. A shard only counts as done when its record carries the current settings' hash, so
two settings never mix in one cache. `--last-frame` on a cache built the same way without it adds the last
frames to its shards in place, without encoding the clips again.

`LatentCache` skips, warns about and counts (`stats["skipped"]`) the samples of a shard that cannot be
read (truncated, garbled), as the raw-video dataset does with a broken video.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from data.dataset import VideoDataset, load_clip
from data.manifest import read_manifest
from data.sampling import ClipPlan, SamplingConfig, latent_token_count
from vae3d.atomic import temp_path, write_json

log = logging.getLogger(__name__)
INDEX = "index.json"
EMPTY_TEXT = "empty_text.safetensors"  # a Wan cache's encoding of "" (unpadded), for text dropout


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def manifest_fingerprint(entries) -> str:
    """A short hash of a manifest's rows (path, caption, start, end, fps), in order."""
    rows = [[e.path, e.caption, e.start, e.end, e.fps] for e in entries]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# settings that decide a cache's content; the others in the index (names, paths) are for the reader
COMPARED = ("manifest_rows", "vae_weights", "text_encoder_weights", "text_max_length", "sampling", "seed",
            "shard_size", "dtype")


def settings_hash(settings: dict) -> str:
    compared = {k: settings.get(k) for k in COMPARED}
    if settings.get("last_frame"):  # only when on, so caches built without last frames keep their hash
        compared["last_frame"] = True
    return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:16]


def without_last_frame(settings: dict) -> dict:
    """The settings of the same cache without the last frames stored."""
    return {k: v for k, v in settings.items() if k != "last_frame"}


def recorded_settings(out: Path) -> dict | None:
    """The settings a cache folder was built with (its index, else any shard's record), or None when it
    holds no cache. A record without settings (an older precache) comes back as {}."""
    records = [out / INDEX] if (out / INDEX).is_file() else sorted(out.glob("shard_*.json"))
    for path in records:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return record.get("settings", {}) if isinstance(record, dict) else {}
    return None


def check_settings(out: Path, settings: dict, rebuild: bool) -> None:
    """Refuse (ValueError naming what differs) to add to a cache built with other settings, unless
    `rebuild`, in which case its outdated shards are re-encoded and its index rewritten."""
    old = recorded_settings(out)
    if old is None or settings_hash(old) == settings_hash(settings):
        return
    if settings.get("last_frame") and settings_hash(old) == settings_hash(without_last_frame(settings)):
        return  # the same cache without last frames: they are added to its shards (`add_last_frames`)
    differ = ([k for k in (*COMPARED, "last_frame") if old.get(k) != settings.get(k)] if old
              else ["none recorded, so all"])
    if rebuild:
        log.warning("rebuilding the latent cache in %s: %s changed", out, ", ".join(differ))
        return
    raise ValueError(f"latent cache {str(out)!r} was built with other settings ({', '.join(differ)} differ); "
                     f"use another --out, or --rebuild to replace that cache")


def _shard_done(out: Path, k: int, digest: str) -> bool:
    path = out / f"{shard_name(k)}.json"
    try:
        return json.loads(path.read_text()).get("settings_hash") == digest
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


@torch.no_grad()
def encode_shard(ds: VideoDataset, rows: list[int], vae, text_encoder, out: Path, k: int,
                 dtype: torch.dtype, settings: dict | None = None, last_frame: bool = False) -> dict:
    """Encode manifest rows into shard k (atomically) -> the shard's JSON record, which records `settings`
    and their hash. `last_frame`: also store each clip's last frame encoded alone, `last.<i>` (C, 1, h, w),
    the latent first-and-last-frame conditioning gives (`videodit.last_frame`)."""
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
        record = {"index": i, "path": sample["path"], "caption": sample["caption"], "shard": shard_name(k),
                  "latent_shape": list(latent.shape), "text_len": len(text)}
        if last_frame and sample["video"].shape[1] > 1:
            last = vae.encode(sample["video"][None, :, -1:].to(device))[0]  # (c, 1, h, w)
            tensors[f"last.{i}"] = last.to(dtype).contiguous().cpu()
            record["has_last"] = True
        samples.append(record)
    with temp_path(out / f"{shard_name(k)}.safetensors") as tmp:
        save_file(tensors or {"empty": torch.zeros(0)}, str(tmp))
    record = {"shard": shard_name(k), "rows": rows, "samples": samples, "skipped": skipped,
              "settings": settings or {}, "settings_hash": settings_hash(settings or {})}
    write_json(out / f"{shard_name(k)}.json", record, indent=1)
    return record


@torch.no_grad()
def add_last_frames(ds: VideoDataset, vae, out: Path, k: int, dtype: torch.dtype, settings: dict) -> dict:
    """Shard k, built with the same settings but without last frames -> the same shard with them: each
    sample's last frame is decoded alone at its planned size (the plan is a function of seed and row) and
    encoded alone, as `encode_shard(last_frame=True)` would; the clips are not encoded again. Rewritten
    atomically, tensors first, then the record that marks the shard done."""
    record = json.loads((out / f"{shard_name(k)}.json").read_text())
    tensors = load_file(str(out / f"{shard_name(k)}.safetensors"))
    device = next(vae.parameters()).device
    for sample in record["samples"]:
        i = sample["index"]
        plan = ds.plan(i)
        if len(plan.indices) < 2:
            continue
        last = load_clip(ds.entries[i].path, ClipPlan((plan.indices[-1],), plan.height, plan.width))
        latent = vae.encode(last[None].to(device))[0]  # (c, 1, h, w)
        tensors[f"last.{i}"] = latent.to(dtype).contiguous().cpu()
        sample["has_last"] = True
    with temp_path(out / f"{shard_name(k)}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    record.update(settings=settings, settings_hash=settings_hash(settings))
    write_json(out / f"{shard_name(k)}.json", record, indent=1)
    return record


def write_index(out: Path, settings: dict, num_shards: int) -> Path | None:
    """Merge every shard's record into index.json once all shards are done with these settings (else
    None)."""
    digest = settings_hash(settings)
    if not all(_shard_done(out, k, digest) for k in range(num_shards)):
        return None
    records = [json.loads((out / f"{shard_name(k)}.json").read_text()) for k in range(num_shards)]
    index = {**settings, "settings": settings, "settings_hash": digest, "num_shards": num_shards,
             "samples": [s for r in records for s in r["samples"]],
             "skipped": [s for r in records for s in r["skipped"]]}
    write_json(out / INDEX, index, indent=1)
    return out / INDEX


def precache(manifest: str | Path, out: str | Path, vae="default", text_encoder="default",
             sampling: SamplingConfig | None = None, seed: int = 0, shard_size: int = 64,
             rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, wan: bool = False, rebuild: bool = False,
             last_frame: bool = False) -> Path | None:
    """Encode this rank's shards of `manifest` into `out`; returns index.json's path once complete.

    `vae` / `text_encoder`: a name/path (loaded here) or an already-loaded model. `wan`: the text encoder
    is a Wan model's UMT5 (a path: a WanPipeline folder or its text_encoder/), encoded as Wan encodes
    prompts; the cache also stores the encoding of "" (EMPTY_TEXT).
    `sampling`: its temporal/spatial strides are replaced by the VAE's own.
    `rebuild`: replace a cache in `out` built with other settings (else that is a ValueError).
    `last_frame`: also store each clip's last frame encoded alone (first-and-last-frame training). A cache
    in `out` built with the same settings without them gains them in place (`add_last_frames`).
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
    te_module = text_encoder.encoder if wan else text_encoder  # the TextEncoder (a Wan one wraps it)
    sampling = sampling or SamplingConfig()
    sampling = SamplingConfig(**{**asdict(sampling), "temporal_stride": vae.temporal_stride,
                                 "spatial_stride": vae.spatial_stride})
    ds = VideoDataset(read_manifest(manifest), sampling, seed=seed, epoch=0, shuffle=False)
    n = len(ds.entries)
    num_shards = -(-n // shard_size)
    settings = {"version": 2, "manifest": str(manifest), "manifest_rows": manifest_fingerprint(ds.entries),
                "vae": str(vae_name), "vae_weights": weights_fingerprint(vae),
                "text_encoder": str(te_name), "text_encoder_weights": weights_fingerprint(te_module.model),
                "text_max_length": te_module.max_length, "wan": wan,
                "sampling": json.loads(json.dumps(asdict(sampling))), "seed": seed, "shard_size": shard_size,
                "num_entries": n, "dtype": str(dtype).removeprefix("torch.")}
    if last_frame:  # recorded only when on, so caches built without it keep their settings hash
        settings["last_frame"] = True
    check_settings(out, settings, rebuild)
    if wan and rank == 0 and not (out / EMPTY_TEXT).is_file():
        empty = text_encoder.encode([""])[0][0]  # (L, D) real-token states of ""
        tmp = out / f".{EMPTY_TEXT}.tmp-{os.getpid()}"
        save_file({"text": empty.to(dtype).contiguous().cpu()}, str(tmp))
        os.replace(tmp, out / EMPTY_TEXT)
    digest = settings_hash(settings)
    if rank == 0:
        for stale in sorted(out.glob("shard_*.json")):  # shards a larger earlier cache had beyond ours
            if int(stale.stem.removeprefix("shard_")) >= num_shards:
                stale.unlink()
                (out / f"{stale.stem}.safetensors").unlink(missing_ok=True)
    for k in range(rank, num_shards, world_size):
        if _shard_done(out, k, digest):
            log.info("shard %s already done, skipping", shard_name(k))
            continue
        if last_frame and _shard_done(out, k, settings_hash(without_last_frame(settings))):
            rec = add_last_frames(ds, vae, out, k, dtype, settings)
            log.info("added last frames to %s: %d clips", shard_name(k), len(rec["samples"]))
            continue
        for leftover in out.glob(f".{shard_name(k)}.tmp-*"):  # a write cut short by a kill
            leftover.unlink(missing_ok=True)
        rows = list(range(k * shard_size, min(n, (k + 1) * shard_size)))
        rec = encode_shard(ds, rows, vae, text_encoder, out, k, dtype, settings, last_frame)
        log.info("wrote %s: %d clips, %d skipped", shard_name(k), len(rec["samples"]), len(rec["skipped"]))
    return write_index(out, settings, num_shards)


class LatentCache:
    """Loader source over a precache folder: sample j = index.json's j-th sample (unreadable ones are
    already left out). Yields {"latent": (c, T, h, w), "text": (L, D), "caption", "path", "index"}, and
    "last" (c, 1, h, w), the clip's last frame encoded alone, from a cache built with `last_frame`."""

    def __init__(self, folder: str | Path, patch: tuple[int, int, int] = (1, 2, 2), causal: bool = False):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise ValueError(f"latent cache {str(self.folder)!r} has no {INDEX}; run python -m data.precache")
        try:
            self.index = json.loads(index_path.read_text())
            self.samples = self.index["samples"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"latent cache index {str(index_path)!r} is not a precache index ({e}); rebuild "
                             f"it with python -m data.precache --rebuild") from None
        self.patch, self.causal = tuple(patch), causal
        self.stats = {"skipped": len(self.index.get("skipped", [])), "yielded": 0}
        self._open: tuple[str, object] | None = None
        self.bad_shards: dict[str, str] = {}  # shard -> why it could not be read
        self.bad: set[int] = set()  # samples skipped (counted once each)

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

    def _skip(self, j: int, shard: str, why: str) -> None:
        if shard not in self.bad_shards:
            self.bad_shards[shard] = why
            log.warning("skipping the samples of cache shard %s: %s", self.folder / f"{shard}.safetensors",
                        why)
        if j not in self.bad:
            self.bad.add(j)
            self.stats["skipped"] = self.stats.get("skipped", 0) + 1

    def load(self, j: int) -> dict | None:
        """Sample j, or None (warned, counted in stats["skipped"]) when its shard cannot be read."""
        s = self.samples[j]
        shard = s["shard"]
        if shard in self.bad_shards:
            self._skip(j, shard, self.bad_shards[shard])
            return None
        try:
            f = self._handle(shard)
            latent = f.get_tensor(f"latent.{s['index']}").float()
            text = f.get_tensor(f"text.{s['index']}").float()
            last = f.get_tensor(f"last.{s['index']}").float() if s.get("has_last") else None
        except Exception as e:  # safetensors raises its own error type for a truncated or garbled file
            self._open = None
            self._skip(j, shard, f"{type(e).__name__}: {e}")
            return None
        if list(latent.shape) != list(s["latent_shape"]):
            self._skip(j, shard, f"latent.{s['index']} has shape {list(latent.shape)}, the index says "
                                 f"{s['latent_shape']}")
            return None
        self.stats["yielded"] += 1
        sample = {"latent": latent, "text": text, "caption": s["caption"], "path": s["path"], "index": j}
        if last is not None:
            sample["last"] = last
        return sample


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
    p.add_argument("--last-frame", action="store_true",
                   help="also store each clip's last frame encoded alone (for data.tasks first_last)")
    p.add_argument("--rebuild", action="store_true",
                   help="replace a cache in --out that was built with other settings (else refused)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import transformers

    transformers.utils.logging.disable_progress_bar()
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
    try:
        index = precache(args.manifest, args.out, vae, text_encoder, sampling, args.seed,
                         args.shard_size, rank, world, device, getattr(torch, args.dtype), wan, args.rebuild,
                         args.last_frame)
    except ValueError as e:
        print(f"precache: error: {e}", file=sys.stderr)
        sys.exit(2)
    if index is not None:
        print(f"latent cache complete: {index}")
    else:
        print(f"rank {rank}: my shards are done; index.json is written by the last rank to finish")


if __name__ == "__main__":
    main()
