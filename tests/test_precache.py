"""Latent cache: equals on-the-fly encoding, resumable, split across ranks."""

import json

import pytest
import torch
from test_data_fixtures import make_dataset, tiny_vae

from data.dataset import VideoDataset
from data.precache import LatentCache, precache, shard_name
from data.sampling import SamplingConfig
from vae3d.io import load_vae
from videodit.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    folder = tiny_vae(tmp_path_factory.mktemp("vae") / "vae")
    return str(folder), load_vae(str(folder)).eval(), TextEncoder("default")


def test_cache_equals_on_the_fly(tmp_path, encoders):
    vae_path, vae, te = encoders
    manifest = make_dataset(tmp_path / "clips", num_clips=3, bad=True)
    sampling = SamplingConfig(min_tokens=4, max_tokens=24, patch=(1, 2, 2))
    index = precache(manifest, tmp_path / "cache", vae, te, sampling, seed=5, shard_size=2)
    meta = json.loads(index.read_text())
    assert len(meta["samples"]) == 3 and len(meta["skipped"]) == 5
    cache = LatentCache(tmp_path / "cache", patch=(1, 2, 2))
    ds = VideoDataset(manifest, SamplingConfig(min_tokens=4, max_tokens=24), seed=5, shuffle=False)
    for j in range(len(cache)):
        got = cache.load(j)
        ref = ds.load(meta["samples"][j]["index"])
        with torch.no_grad():
            z = vae.encode(ref["video"][None])[0]
        torch.testing.assert_close(got["latent"], z, rtol=0, atol=0)
        torch.testing.assert_close(got["text"], te.encode([ref["caption"]])[0][0], rtol=1e-5, atol=1e-5)
        assert got["caption"] == ref["caption"]
        assert cache.token_length(j) == (z.shape[1]) * (z.shape[2] // 2) * (z.shape[3] // 2)


def test_resumable_and_rank_split(tmp_path, encoders):
    _, vae, te = encoders
    manifest = make_dataset(tmp_path / "clips", num_clips=4)
    out = tmp_path / "cache"
    cfg = SamplingConfig(min_tokens=4, max_tokens=16)
    assert precache(manifest, out, vae, te, cfg, shard_size=1, rank=0, world_size=2) is None  # shards 0, 2
    assert sorted(p.stem for p in out.glob("shard_*.json")) == [shard_name(0), shard_name(2)]
    stamp = (out / f"{shard_name(0)}.safetensors").stat().st_mtime_ns
    index = precache(manifest, out, vae, te, cfg, shard_size=1, rank=1, world_size=2)  # 1, 3 -> complete
    assert index is not None and len(json.loads(index.read_text())["samples"]) == 4
    (out / f"{shard_name(3)}.json").unlink()  # as if killed before shard 3 finished
    precache(manifest, out, vae, te, cfg, shard_size=1)
    assert (out / f"{shard_name(0)}.safetensors").stat().st_mtime_ns == stamp  # done shards skipped
    assert (out / f"{shard_name(3)}.json").is_file()


def test_last_frame_cache_stores_the_last_frame_encoded_alone(tmp_path, encoders):
    """--last-frame: each clip of more than one frame also stores its last frame encoded alone (what
    first-and-last-frame conditioning gives the model), and LatentCache yields it; the settings record it,
    and a cache built without it keeps its settings hash (no "last_frame" key)."""
    _, vae, te = encoders
    manifest = make_dataset(tmp_path / "clips", num_clips=3)
    sampling = SamplingConfig(min_tokens=4, max_tokens=24, patch=(1, 2, 2))
    index = json.loads(precache(manifest, tmp_path / "cache", vae, te, sampling, seed=5,
                                last_frame=True).read_text())
    plain = json.loads(precache(manifest, tmp_path / "plain", vae, te, sampling, seed=5).read_text())
    assert index["settings"]["last_frame"] is True and "last_frame" not in plain["settings"]
    cache = LatentCache(tmp_path / "cache", patch=(1, 2, 2))
    ds = VideoDataset(manifest, SamplingConfig(min_tokens=4, max_tokens=24), seed=5, shuffle=False)
    stored = 0
    for j in range(len(cache)):
        got, ref = cache.load(j), ds.load(index["samples"][j]["index"])
        if ref["video"].shape[1] == 1:
            assert "last" not in got
            continue
        with torch.no_grad():
            last = vae.encode(ref["video"][None, :, -1:])[0]
        torch.testing.assert_close(got["last"], last, rtol=0, atol=0)
        stored += 1
    assert stored > 0 and "last" not in LatentCache(tmp_path / "plain", patch=(1, 2, 2)).load(0)


def test_last_frames_are_added_in_place_to_a_cache_built_without_them(tmp_path, encoders, monkeypatch):
    """--last-frame on a cache built without it adds exactly the last frames a fresh --last-frame cache
    holds, leaves the clip latents as they were and encodes no clip again."""
    import data.precache as module

    _, vae, te = encoders
    manifest = make_dataset(tmp_path / "clips", num_clips=3)
    sampling = SamplingConfig(min_tokens=4, max_tokens=24, patch=(1, 2, 2))
    fresh = json.loads(precache(manifest, tmp_path / "fresh", vae, te, sampling, seed=5, shard_size=2,
                                last_frame=True).read_text())
    precache(manifest, tmp_path / "grown", vae, te, sampling, seed=5, shard_size=2)
    before = LatentCache(tmp_path / "grown", patch=(1, 2, 2))
    latents = [before.load(j)["latent"] for j in range(len(before))]
    monkeypatch.setattr(module, "encode_shard", lambda *a, **k: pytest.fail("a clip was encoded again"))
    grown = json.loads(precache(manifest, tmp_path / "grown", vae, te, sampling, seed=5, shard_size=2,
                                last_frame=True).read_text())
    assert grown["settings_hash"] == fresh["settings_hash"] and grown["samples"] == fresh["samples"]
    a, b = LatentCache(tmp_path / "fresh", patch=(1, 2, 2)), LatentCache(tmp_path / "grown", patch=(1, 2, 2))
    assert any("last" in a.load(j) for j in range(len(a)))
    for j in range(len(a)):
        x, y = a.load(j), b.load(j)
        assert torch.equal(y["latent"], latents[j]) and ("last" in x) == ("last" in y)
        if "last" in x:
            torch.testing.assert_close(x["last"], y["last"], rtol=0, atol=0)


def test_missing_index_refused(tmp_path):
    with pytest.raises(ValueError, match="index.json"):
        LatentCache(tmp_path)


def test_cli_min_frames_keeps_whole_clips(tmp_path, encoders):
    """--min-frames = --max-frames takes every clip whole (9 or 13 frames -> 3 or 4 latent frames at ts 4),
    instead of a random shorter span whose caption may describe motion it does not show."""
    from data.precache import main

    vae_path, _, _ = encoders
    manifest = make_dataset(tmp_path / "clips", num_clips=4)
    common = ["--manifest", str(manifest), "--vae", vae_path, "--min-tokens", "4", "--max-tokens", "64",
              "--patch", "1", "2", "2", "--max-frames", "13", "--shard-size", "4"]
    main([*common, "--out", str(tmp_path / "whole"), "--min-frames", "13"])
    whole = json.loads((tmp_path / "whole/index.json").read_text())
    assert whole["sampling"]["min_frames"] == 13
    frames = {s["path"]: s["latent_shape"][1] for s in whole["samples"]}
    assert sorted(frames.values()) == [3, 3, 4, 4]  # clips alternate 9 and 13 frames
