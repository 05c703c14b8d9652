"""Write and read H.264 mp4 files through PyAV.

`Mp4Writer` streams uint8 frame chunks `(f, H, W, 3)` to disk without holding the clip in memory. It
writes a hidden temporary file beside the target and renames it over the target only when the video is
complete (`os.replace`), so an interrupted write never replaces or truncates an existing file.
Even sizes use yuv420p (the widely playable default); an odd height or width uses yuv444p so the
file keeps the exact size instead of being rounded by chroma subsampling.

`read_mp4(path)` decodes every frame back to uint8 `(F, H, W, 3)` RGB.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _to_uint8_numpy(frames) -> np.ndarray:
    """numpy array or torch tensor `(f, H, W, 3)` uint8 -> contiguous numpy `(f, H, W, 3)` uint8."""
    if hasattr(frames, "detach"):  # torch.Tensor, without importing torch here
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim == 3:
        frames = frames[None]  # (H, W, 3) -> (1, H, W, 3)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (f, H, W, 3), got {tuple(frames.shape)}")
    return np.ascontiguousarray(frames)


class Mp4Writer:
    """Streaming H.264 writer.

    with Mp4Writer("out.mp4", fps=8, height=48, width=80) as w:
        w.write(frames)  # uint8 (f, 48, 80, 3), numpy or torch; call as often as you like
    """

    def __init__(self, path: str | Path, fps: float, height: int, width: int, crf: int = 18):
        if not (isinstance(height, int) and isinstance(width, int)) or height < 1 or width < 1:
            raise ValueError(f"height and width must be positive ints, got {height}x{width}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        self.path = Path(path)
        self.height, self.width = height, width
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{uuid.uuid4().hex[:8]}.mp4")
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = width, height
        even = height % 2 == 0 and width % 2 == 0
        self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self._closed = False

    def write(self, frames) -> None:
        """Append uint8 frames `(f, H, W, 3)` (or one frame `(H, W, 3)`)."""
        if self._closed:
            raise ValueError(f"Mp4Writer for {self.path} is already closed")
        frames = _to_uint8_numpy(frames)
        if frames.shape[1:3] != (self.height, self.width):
            raise ValueError(
                f"frame size {frames.shape[1]}x{frames.shape[2]} does not match the writer's "
                f"{self.height}x{self.width}"
            )
        for frame in frames:
            vframe = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in self._stream.encode(vframe):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        """Finish the file and put it in place (the commit point)."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                for packet in self._stream.encode():  # flush
                    self._container.mux(packet)
            finally:
                self._container.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise

    def abort(self) -> None:
        """Drop the video written so far; the target is left as it was."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(path: str | Path, frames, fps: float = 8, crf: int = 18) -> None:
    """Write a whole uint8 clip `(F, H, W, 3)` to `path`."""
    frames = _to_uint8_numpy(frames)
    with Mp4Writer(path, fps, frames.shape[1], frames.shape[2], crf=crf) as writer:
        writer.write(frames)


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file -> uint8 `(F, H, W, 3)` RGB."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no video frames decoded from {path}")
    return np.stack(frames)  # (F, H, W, 3)
