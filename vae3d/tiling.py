"""Spatial tiling with linearly blended overlaps, as pure functions on latent-grid coordinates.

A frame is cut into tiles on the latent grid (pixel tiles are the same spans times the spatial stride),
each tile is encoded/decoded on its own, and overlapping outputs are blended with ramps that rise across
the overlap, normalised by the accumulated weight. Memory is then bounded by the tile, not the frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Cover [0, size) with the fewest equal spans of length <= `tile` overlapping by >= `overlap`."""
    if tile <= overlap:
        raise ValueError(f"tile {tile} must be larger than overlap {overlap}")
    if size <= tile:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))
    length = math.ceil((size + (n - 1) * overlap) / n)
    starts = [round(i * (size - length) / (n - 1)) for i in range(n)]
    return [(s, s + length) for s in starts]


def _ramp(length: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    """Weights along one axis: on a side with a neighbour, 0 over the outer quarter of the overlap (the part
    a tile computes from zero padding instead of real context), a linear ramp over its middle half, then 1.
    Two neighbours' ramps sum to 1 across an overlap of exactly `overlap`."""
    d = torch.arange(length, dtype=torch.float32) + 0.5  # distance from the left edge
    w = torch.ones(length)
    if overlap > 0:
        if left:
            w = torch.minimum(w, ((d - overlap / 4) / (overlap / 2)).clamp(0, 1))
        if right:
            w = torch.minimum(w, ((length - d - overlap / 4) / (overlap / 2)).clamp(0, 1))
    return w


def blend_mask(span_h: tuple[int, int], span_w: tuple[int, int], size_h: int, size_w: int,
               overlap: int, scale: int) -> torch.Tensor:
    """Weight (h * scale, w * scale) of one tile: ramps within `overlap * scale` on sides with a neighbour."""
    (h0, h1), (w0, w1) = span_h, span_w
    wh = _ramp((h1 - h0) * scale, overlap * scale, h0 > 0, h1 < size_h)
    ww = _ramp((w1 - w0) * scale, overlap * scale, w0 > 0, w1 < size_w)
    return wh[:, None] * ww[None, :]  # (h, w)


def run_tiled(fn: Callable, x: torch.Tensor, caches: dict, spans_h: list, spans_w: list,
              in_scale: int, out_scale: int, overlap: int) -> torch.Tensor:
    """Apply `fn(x_tile, cache) -> (y_tile, cache)` tile by tile and blend.

    Spans are in latent units; input tile = span * in_scale, output tile = span * out_scale pixels/latents.
    x: (B, C, F, H, W) -> (B, C', F', H * out_scale / in_scale, W * ...). `caches` maps tile index -> cache
    and is updated in place so the next temporal chunk continues each tile's stream.
    """
    size_h, size_w = spans_h[-1][1], spans_w[-1][1]
    out = weight = None
    for i, sh in enumerate(spans_h):
        for j, sw in enumerate(spans_w):
            xt = x[..., sh[0] * in_scale: sh[1] * in_scale, sw[0] * in_scale: sw[1] * in_scale]
            yt, caches[(i, j)] = fn(xt, caches.get((i, j)))  # (B, C', F', h, w)
            if yt.shape[2] == 0:
                continue
            if len(spans_h) == 1 and len(spans_w) == 1:
                return yt
            if out is None:
                out = yt.new_zeros(*yt.shape[:3], size_h * out_scale, size_w * out_scale)
                weight = yt.new_zeros(size_h * out_scale, size_w * out_scale)
            m = blend_mask(sh, sw, size_h, size_w, overlap, out_scale).to(yt)  # (h, w)
            hs = slice(sh[0] * out_scale, sh[1] * out_scale)
            ws = slice(sw[0] * out_scale, sw[1] * out_scale)
            out[..., hs, ws] += yt * m
            weight[hs, ws] += m
    return yt if out is None else out / weight
