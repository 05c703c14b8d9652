"""Video and image reading: decord first, av (PyAV) as the fallback; images are 1-frame videos.

Used at inference (init videos and stills for video-to-video, `first_frames`) and by the data layer.

All functions return uint8 frames `(F, H, W, 3)` (RGB) and raise `VideoDecodeError` naming the file on
any failure (missing, empty, truncated, garbled, not a video). Resizing, when asked for, happens inside
the decoder (decord's / ffmpeg's scaler), which is much cheaper than decoding at full size first.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
Backend = Literal["auto", "decord", "av"]

try:  # decord is optional at run time: av is always the fallback
    import decord

    decord.bridge.set_bridge("native")
except Exception:  # pragma: no cover - depends on the platform's wheels
    decord = None


class VideoDecodeError(ValueError):
    """A file could not be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What a clip holds: frame count, frame rate, size (height, width) in pixels."""

    num_frames: int
    fps: float
    height: int
    width: int


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: file is empty")
    return path


# ---------------------------------------------------------------- images


def _image_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)[None].copy()  # (1, H, W, 3)
    except Exception as e:
        raise VideoDecodeError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- decord


def _decord_reader(path: Path, size: tuple[int, int] | None):
    kwargs = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kwargs)


def _probe_decord(path: Path) -> VideoInfo:
    vr = _decord_reader(path, None)
    h, w = vr[0].shape[:2] if len(vr) else (0, 0)
    return VideoInfo(num_frames=len(vr), fps=float(vr.get_avg_fps()), height=int(h), width=int(w))


def _frames_decord(path: Path, indices: list[int], size: tuple[int, int] | None) -> np.ndarray:
    vr = _decord_reader(path, size)
    if indices and max(indices) >= len(vr):
        raise VideoDecodeError(f"{path}: frame {max(indices)} requested but the file has {len(vr)}")
    return vr.get_batch(indices).asnumpy()  # (F, H, W, 3)


# ---------------------------------------------------------------- av


def _probe_av(path: Path) -> VideoInfo:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        n = int(stream.frames or 0)
        if n == 0:  # container does not store the count: decode to count (small clips / odd formats)
            n = sum(1 for _ in container.decode(stream))
        return VideoInfo(num_frames=n, fps=fps, height=int(stream.height), width=int(stream.width))


def _frames_av(path: Path, indices: list[int], size: tuple[int, int] | None) -> np.ndarray:
    import av

    wanted: dict[int, list[int]] = {}
    for out_pos, i in enumerate(indices):
        wanted.setdefault(i, []).append(out_pos)
    out: list[np.ndarray | None] = [None] * len(indices)
    last = max(indices) if indices else -1
    kwargs = {"format": "rgb24"}
    if size is not None:
        kwargs.update(height=int(size[0]), width=int(size[1]), interpolation="BILINEAR")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1  # one core per clip; parallelism comes from ranks / loader workers
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                arr = frame.to_ndarray(**kwargs)  # (H, W, 3)
                for pos in wanted[i]:
                    out[pos] = arr
            if i >= last:
                break
    if any(a is None for a in out):
        got = sum(a is not None for a in out)
        raise VideoDecodeError(f"{path}: only {got} of {len(indices)} requested frames could be decoded")
    return np.stack(out)  # (F, H, W, 3)


# ---------------------------------------------------------------- public API


def _backends(backend: Backend) -> list[str]:
    if backend not in ("auto", "decord", "av"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'av', got {backend!r}")
    if backend == "decord" and decord is None:
        raise ValueError("backend 'decord' requested but decord is not installed")
    if backend == "auto":
        return ["decord", "av"] if decord is not None else ["av"]
    return [backend]


def _try(path: Path, backend: Backend, fns: dict, *args):
    errors = []
    for name in _backends(backend):
        try:
            return fns[name](path, *args)
        except VideoDecodeError as e:
            errors.append(f"{name}: {e}")
        except Exception as e:  # decord/av raise many types for broken files
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise VideoDecodeError(f"{path}: could not decode ({'; '.join(errors)})")


def probe_video(path: str | Path, backend: Backend = "auto") -> VideoInfo:
    """Frame count, fps and size of a video (an image is 1 frame at fps 1)."""
    path = _check_file(path)
    if is_image(path):
        frame = _image_rgb(path, None)
        return VideoInfo(num_frames=1, fps=1.0, height=frame.shape[1], width=frame.shape[2])
    info = _try(path, backend, {"decord": _probe_decord, "av": _probe_av})
    if info.num_frames < 1 or info.height < 1 or info.width < 1:
        raise VideoDecodeError(f"{path}: no decodable frames")
    return info


def decode_frames(
    path: str | Path, indices: list[int], size: tuple[int, int] | None = None, backend: Backend = "auto"
) -> np.ndarray:
    """Frames at the given 0-based indices, optionally resized to `size=(H, W)` -> uint8 (F, H, W, 3)."""
    path = _check_file(path)
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"{path}: indices must be a non-empty list of frame numbers >= 0, got {indices}")
    if is_image(path):
        if max(indices) > 0:
            raise VideoDecodeError(f"{path}: an image has 1 frame, asked for frame {max(indices)}")
        return np.repeat(_image_rgb(path, size), len(indices), axis=0)
    frames = _try(path, backend, {"decord": _frames_decord, "av": _frames_av}, indices, size)
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: decoder returned frames of shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def frame_indices(
    info: VideoInfo,
    num_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    stride: int = 1,
    fps: float | None = None,
) -> list[int]:
    """Indices of every `stride`-th frame between `start` and `end` seconds (at most `num_frames`).

    `fps` overrides the file's own rate for converting seconds to frames.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    rate = fps or info.fps
    first = 0 if start is None else max(0, int(math.floor(start * rate + 1e-6)))
    stop = info.num_frames if end is None else min(info.num_frames, int(math.ceil(end * rate - 1e-6)))
    idx = list(range(first, stop, stride))
    if num_frames is not None:
        idx = idx[:num_frames]
    return idx


def decode_video(
    path: str | Path,
    num_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    backend: Backend = "auto",
) -> np.ndarray:
    """Decode a video (or an image as 1 frame) -> uint8 (F, H, W, 3).

    Takes every `stride`-th frame from `start` to `end` seconds, at most `num_frames` of them, resized
    to `size=(H, W)` if given. Raises VideoDecodeError naming the file on any failure.
    """
    info = probe_video(path, backend)
    idx = frame_indices(info, num_frames, start, end, stride)
    if not idx:
        raise VideoDecodeError(f"{path}: no frames between start={start} and end={end} s")
    return decode_frames(path, idx, size, backend)


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence writes to file descriptor 2 (FFmpeg's own log lines from decord / av on a bad file): the
    decode error is raised as an exception that names the file and the cause."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def frames_at_rate(path: str | Path, fps: float, max_frames: int) -> np.ndarray:
    """A video's frames resampled to `fps` (frame i is the one showing at i / fps seconds), at most
    `max_frames` of them, uint8 (F, H, W, 3); an image is one frame. VideoDecodeError names the file."""
    with quiet_native_stderr():
        if is_image(path):
            return decode_frames(path, [0])
        info = probe_video(path)
        duration = info.num_frames / info.fps
        count = min(max_frames, max(1, math.floor(duration * fps + 1e-6)))
        indices = [min(info.num_frames - 1, math.floor(i * info.fps / fps + 1e-6)) for i in range(count)]
        return decode_frames(path, indices)


def read_conditioning(image: Path | None, extend: Path | None, num_frames: int, fps: float) -> np.ndarray:
    """The frames a request of `num_frames` frames conditions on, uint8 (F, H0, W0, 3): `image` (an image,
    or a video's first frame) -> 1 frame; `extend` -> that clip at `fps`, which must be shorter than the
    request and longer than one frame. ValueError naming the file otherwise."""
    if image is not None:
        with quiet_native_stderr():
            return decode_frames(image, [0])
    frames = frames_at_rate(extend, fps, num_frames)
    if frames.shape[0] >= num_frames:
        raise ValueError(f"extend clip {str(extend)!r} already has {num_frames} or more frames at "
                         f"{fps:g} fps; ask for more frames than the clip has to extend it")
    if frames.shape[0] < 2:
        raise ValueError(f"extend clip {str(extend)!r} has a single frame at {fps:g} fps; give it as an "
                         f"image (--image) instead")
    return frames


def source_extent(path: str | Path, num_frames: int) -> tuple[int, int, int]:
    """(frames read, height, width) of a request's init video, image or clip, from its header only: what
    the memory estimate (`videodit.budget`) needs of a source before anything is decoded."""
    with quiet_native_stderr():
        info = probe_video(path)
    return min(info.num_frames, num_frames), info.height, info.width


def first_frames(path: str | Path, num_frames: int, wanted_by: str = "the request",
                 repeat_image: bool = True) -> np.ndarray:
    """The first `num_frames` frames of a video at its own rate, uint8 (F, H, W, 3); an image repeats
    (`repeat_image=False`: an image comes back as its one frame, for a caller that repeats it after
    resizing, as `videodit.pipeline.init_pixels` does).

    ValueError (`VideoDecodeError`) naming the file when it cannot be decoded or is shorter; `wanted_by`
    names who asked (e.g. the output file) in that message.
    """
    with quiet_native_stderr():
        if is_image(path):
            frame = decode_frames(path, [0])
            return np.repeat(frame, num_frames, axis=0) if repeat_image else frame
        info = probe_video(path)
        if info.num_frames < num_frames:
            raise ValueError(f"init video {str(path)!r} has {info.num_frames} frames; {wanted_by} asks for "
                             f"{num_frames} (give --frames <= {info.num_frames})")
        return decode_frames(path, list(range(num_frames)))
