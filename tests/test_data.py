"""Manifests, decoding (decord and av), NaViT sampling and the clip dataset."""

import json
import logging
import random

import numpy as np
import pytest
from test_data_fixtures import clip_frames, make_dataset, write_clip

from data.dataset import VideoDataset
from data.manifest import read_manifest
from data.sampling import SamplingConfig, choose_resolution, plan_clip, token_count
from videodit.video_reader import VideoDecodeError, decode_frames, decode_video, probe_video

# ------------------------------------------------------------------ manifests


def test_manifest_csv_jsonl_folder_agree(tmp_path):
    write_clip(tmp_path / "a.mp4")
    (tmp_path / "a.txt").write_text("a red ball\n")
    (tmp_path / "m.csv").write_text("path,caption,start,end,fps\na.mp4,a red ball,0.1,0.9,\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "a red ball", "start": 0.1,
                                                  "end": 0.9}) + "\n")
    csv_, jsonl = read_manifest(tmp_path / "m.csv"), read_manifest(tmp_path / "m.jsonl")
    folder = read_manifest(tmp_path)
    assert csv_ == jsonl
    assert csv_[0].path == str(tmp_path / "a.mp4") and csv_[0].start == 0.1 and csv_[0].fps is None
    assert folder[0].path == csv_[0].path and folder[0].caption == "a red ball"


@pytest.mark.parametrize("header,missing", [("file,caption", "'path'"), ("path,text", "'caption'"),
                                            ("video,text", "'path', 'caption'")])
def test_manifest_missing_columns_named(tmp_path, header, missing):
    (tmp_path / "m.csv").write_text(f"{header}\nx.mp4,hello\n")
    with pytest.raises(ValueError, match=f"missing required column.*{missing}"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.jsonl").write_text(json.dumps(dict(zip(header.split(","), ["x.mp4", "hi"]))) + "\n")
    with pytest.raises(ValueError, match=missing):
        read_manifest(tmp_path / "m.jsonl")


@pytest.mark.parametrize("second,why", [('{"path": "b.mp4"', "not valid JSON"),
                                        ('["b.mp4"]', "expected a JSON object"),
                                        ('{"path": "b.mp4"}', "missing required column")])
def test_manifest_jsonl_bad_line_named(tmp_path, second, why):
    good = json.dumps({"path": "a.mp4", "caption": "a red ball"})
    (tmp_path / "m.jsonl").write_text(f"{good}\n\n{second}\n")
    with pytest.raises(ValueError, match=f"m.jsonl:3.*{why}|{why}.*m.jsonl:3"):
        read_manifest(tmp_path / "m.jsonl")


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_decode_matches_source(tmp_path, backend):
    src = clip_frames(9, 32, 64)
    path = write_clip(tmp_path / "c.mp4", num_frames=9, height=32, width=64, fps=8)
    info = probe_video(path, backend)
    assert (info.num_frames, info.height, info.width) == (9, 32, 64) and info.fps == pytest.approx(8)
    frames = decode_video(path, backend=backend)
    assert frames.dtype == np.uint8 and frames.shape == (9, 32, 64, 3)
    assert np.abs(frames.astype(float) - src).mean() < 6  # lossy codec, near the source
    sub = decode_video(path, num_frames=3, start=0.25, stride=2, backend=backend)  # frames 2, 4, 6
    np.testing.assert_array_equal(sub, frames[[2, 4, 6]])
    small = decode_frames(path, [0, 8], size=(16, 32), backend=backend)
    assert small.shape == (2, 16, 32, 3)


def test_auto_falls_back_to_av_where_decord_fails(tmp_path):
    # decord 0.6 cannot resize to some widths (e.g. 24: "DECORDArrayCopyFromTo: The size must exactly match")
    path = write_clip(tmp_path / "c.mp4", height=32, width=48)
    with pytest.raises(VideoDecodeError, match="c.mp4"):
        decode_frames(path, [0, 1], size=(16, 24), backend="decord")
    auto = decode_frames(path, [0, 1], size=(16, 24))
    np.testing.assert_array_equal(auto, decode_frames(path, [0, 1], size=(16, 24), backend="av"))


def test_decord_and_av_agree(tmp_path):
    path = write_clip(tmp_path / "c.mp4", width=64)
    a, b = decode_video(path, backend="decord"), decode_video(path, backend="av")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_image_is_one_frame(tmp_path):
    from PIL import Image

    arr = clip_frames(1, 20, 30)[0]
    Image.fromarray(arr).save(tmp_path / "x.png")
    frames = decode_video(tmp_path / "x.png")
    assert frames.shape == (1, 20, 30, 3)
    np.testing.assert_array_equal(frames[0], arr)


def test_bad_files_raise_naming_file(tmp_path):
    manifest = make_dataset(tmp_path, num_clips=1, bad=True)
    for e in read_manifest(manifest)[1:]:
        with pytest.raises(VideoDecodeError, match=e.path.split("/")[-1]):
            decode_video(e.path)


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("seed", range(30))
def test_plan_clip_fits_budget_and_keeps_aspect(seed):
    rng = random.Random(seed)
    cfg = SamplingConfig(min_tokens=rng.randint(4, 50), max_tokens=rng.randint(50, 400),
                         max_frames=rng.choice([1, 5, 17, 33]), target_fps=rng.choice([0, 8, 12]))
    H, W = rng.randint(20, 1080), rng.randint(20, 1920)
    F, fps = rng.randint(1, 200), rng.choice([8, 24, 30, 60])
    plan = plan_clip(F, fps, H, W, cfg, rng)
    n = len(plan.indices)
    assert (n - 1) % cfg.temporal_stride == 0 and n <= cfg.max_frames
    assert all(0 <= i < F for i in plan.indices)
    strides = set(np.diff(plan.indices).tolist())
    assert len(strides) <= 1
    assert plan.height % 16 == 0 and plan.width % 16 == 0
    assert plan.height <= max(H, 16) and plan.width <= max(W, 16)
    assert token_count(n, plan.height, plan.width, cfg) <= cfg.max_tokens
    if plan.height >= 64 and plan.width >= 64:  # rounding error is small once the grid is not tiny
        assert abs(np.log((plan.height / plan.width) / (H / W))) < 0.3


def test_resolution_hits_budget_and_target_fps():
    cfg = SamplingConfig(min_tokens=256, max_tokens=256, target_fps=8, min_frames=9, max_frames=9)
    H, W = choose_resolution(720, 1280, 256, cfg)
    assert (H // 16) * (W // 16) <= 256 and (H // 16) * (W // 16) > 0.8 * 256
    assert abs(W / H - 1280 / 720) < 0.15
    plan = plan_clip(300, 24.0, 720, 1280, cfg, random.Random(0))
    assert np.diff(plan.indices).tolist() == [3] * 8  # 24 fps -> stride 3 for 8 fps; 9 = 1 + 2*4 frames


# ------------------------------------------------------------------ dataset


def test_dataset_yields_clips_and_skips_bad(tmp_path, caplog):
    manifest = make_dataset(tmp_path, num_clips=3, bad=True)
    ds = VideoDataset(manifest, SamplingConfig(min_tokens=4, max_tokens=24), seed=1)
    with caplog.at_level(logging.WARNING, logger="data.dataset"):
        samples = list(ds)
    assert len(samples) == 3 and ds.stats["skipped"] == 5
    for name in ("missing.mp4", "empty.mp4", "truncated.mp4", "garbled.mp4", "notvideo.mp4"):
        assert name in caplog.text
    for s in samples:
        v = s["video"]
        assert v.ndim == 4 and v.shape[0] == 3 and v.min() >= -1 and v.max() <= 1
        assert (v.shape[1] - 1) % 4 == 0 and s["caption"].startswith("clip number")
    again = list(VideoDataset(manifest, SamplingConfig(min_tokens=4, max_tokens=24), seed=1))
    assert [s["path"] for s in again] == [s["path"] for s in samples]
    assert all((a["video"] == b["video"]).all() for a, b in zip(again, samples))


def test_dataset_rank_split_is_a_partition(tmp_path):
    manifest = make_dataset(tmp_path, num_clips=4)
    parts = [VideoDataset(manifest, seed=3, rank=r, world_size=2).indices() for r in range(2)]
    assert sorted(parts[0] + parts[1]) == [0, 1, 2, 3] and not set(parts[0]) & set(parts[1])
