import numpy as np
import pytest
import torch

from videodit.mp4 import Mp4Writer, read_mp4, write_mp4


def _smooth_clip(f, h, w, seed=0):
    """A smooth moving gradient (codec-friendly) uint8 (f, h, w, 3)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, size=3)
    t = np.arange(f)[:, None, None, None]
    y = np.arange(h)[None, :, None, None] / h
    x = np.arange(w)[None, None, :, None] / w
    img = 127.5 + 100 * np.sin(2 * np.pi * (x + 0.5 * y) + phase + 0.2 * t)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(32, 48), (33, 47), (16, 17)])
def test_round_trip_size_count_and_error(tmp_path, h, w):
    clip = _smooth_clip(9, h, w)
    path = tmp_path / "clip.mp4"
    with Mp4Writer(path, fps=8, height=h, width=w) as writer:
        writer.write(clip[:4])
        writer.write(torch.from_numpy(clip[4:]))  # torch chunks too
        assert writer.frames_written == 9
    back = read_mp4(path)
    assert back.shape == (9, h, w, 3) and back.dtype == np.uint8
    err = np.abs(back.astype(np.float32) - clip.astype(np.float32)).mean()
    # 4:2:0 chroma subsampling costs ~4 levels on this strongly coloured gradient at crf 18
    assert err < 6.0, err


def test_odd_size_is_full_chroma(tmp_path):
    """Odd sizes are written yuv444p: at crf 0 the round trip is near lossless (4:2:0 would cost ~4)."""
    clip = _smooth_clip(3, 33, 47)
    write_mp4(tmp_path / "odd.mp4", clip, crf=0)
    back = read_mp4(tmp_path / "odd.mp4")
    assert back.shape == clip.shape
    assert np.abs(back.astype(np.float32) - clip.astype(np.float32)).mean() < 1.0


def test_solid_colours_stay_clean(tmp_path):
    clip = np.zeros((5, 32, 32, 3), np.uint8)
    clip[..., 0] = 230
    clip[:, 8:24, 8:24] = (20, 200, 40)
    write_mp4(tmp_path / "c.mp4", clip)
    back = read_mp4(tmp_path / "c.mp4").astype(int)
    assert np.abs(back[:, 2, 2] - (230, 0, 0)).max() <= 6
    assert np.abs(back[:, 16, 16] - (20, 200, 40)).max() <= 6


def test_rejects_bad_input(tmp_path):
    with Mp4Writer(tmp_path / "x.mp4", fps=8, height=16, width=16) as writer:
        with pytest.raises(ValueError, match="does not match"):
            writer.write(np.zeros((1, 16, 18, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((1, 16, 16, 3), np.float32))
        writer.write(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="closed"):
        writer.write(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="height and width"):
        Mp4Writer(tmp_path / "y.mp4", fps=8, height=0, width=16)
