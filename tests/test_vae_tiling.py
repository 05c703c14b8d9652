"""Tiling helpers: spans cover the axis with bounded tiles, blend weights form a partition of unity."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vae3d import CausalVAE3D, VAEConfig
from vae3d.tiling import blend_mask, tile_spans


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 400), tile=st.integers(9, 80), overlap=st.integers(1, 8))
def test_tile_spans_cover_with_overlap(size, tile, overlap):
    spans = tile_spans(size, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(0 < e - s <= tile for s, e in spans)
    for (s0, e0), (s1, _e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e0 - s1 >= overlap  # neighbours overlap by at least `overlap`


def test_blend_weights_sum_to_one_where_tiles_meet_exactly():
    size, overlap, scale = 20, 4, 2
    spans = [(0, 12), (8, 20)]  # overlap exactly 4
    total = torch.zeros(size * scale)
    for s in spans:
        total[s[0] * scale: s[1] * scale] += blend_mask((0, 1), s, 1, size, overlap, scale)[0]
    torch.testing.assert_close(total, torch.ones(size * scale))


def test_tiled_streaming_equals_tiled_one_pass():
    """Per-tile caches: chunked + tiled decode/encode == one-pass tiled decode/encode."""
    m = CausalVAE3D(VAEConfig(base_channels=8, channel_mult=(1, 2, 2), latent_channels=4)).eval()
    v = torch.rand(1, 3, 9, 96, 160) * 2 - 1
    with torch.no_grad():
        z = m.encode(v, tile=96)
        assert (m.encode(v, tile=96, chunk_frames=3) - z).abs().max() <= 1e-4
        x = m.decode(z, tile=96)
        parts = list(m.decode_stream(z, tile=96, chunk_frames=4))
        assert len(parts) == 3
        assert (torch.cat(parts, 2) - x).abs().max() <= 1e-4
