import pytest
import torch

from videodit.packing import grid_positions, num_tokens, pack, pack_like, plan_rows, unpack
from videodit.patchify import spacetime_patchify

PATCH = (1, 2, 2)


def _samples():
    shapes = [(4, 3, 6, 8), (4, 1, 5, 7), (4, 2, 4, 4), (4, 5, 2, 10)]
    latents = [torch.randn(s) for s in shapes]
    texts = [torch.randn(n, 6) for n in (3, 0, 7, 1)]
    return latents, texts


def test_pack_unpack_round_trip_without_dropping():
    latents, texts = _samples()
    packed = pack(latents, texts, PATCH)
    lengths = [num_tokens(z.shape[1:], PATCH) for z in latents]
    assert packed.tokens.shape == (sum(lengths), 4 * 4)
    assert packed.cu_seqlens.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed.cu_seqlens.dtype == torch.int32 and packed.max_seqlen == max(lengths)
    assert packed.sample_id.tolist() == sum(([i] * n for i, n in enumerate(lengths)), [])
    assert packed.text_cu_seqlens.tolist() == [0, 3, 3, 10, 11]
    assert torch.equal(packed.text[3:10], texts[2]) and packed.text_sample_id.tolist() == [0] * 3 + [
        2
    ] * 7 + [3]
    back = unpack(packed, packed.tokens, 4)
    assert all(torch.equal(a, b) for a, b in zip(back, latents))


def test_positions_are_per_sample_grid_coordinates():
    latents, texts = _samples()
    packed = pack(latents, texts, PATCH)
    s = packed.cu_seqlens.tolist()
    for i, z in enumerate(latents):
        _, grid = spacetime_patchify(z, PATCH)
        assert torch.equal(packed.pos[s[i] : s[i + 1]], grid_positions(grid))
    assert packed.pos[s[2]].tolist() == [0, 0, 0]  # a sample's positions start at its own origin


@pytest.mark.parametrize("rate", [0.5, lambda n: 0.75 if n > 20 else 0.1])
def test_token_dropping_round_trip(rate):
    latents, texts = _samples()
    g = torch.Generator().manual_seed(1)
    packed = pack(latents, texts, PATCH, drop_rate=rate, generator=g)
    full = [num_tokens(z.shape[1:], PATCH) for z in latents]
    kept = packed.seqlens
    assert all(1 <= k < f for k, f in zip(kept, full)) and packed.tokens.shape[0] == sum(kept)
    for k, f in zip(kept, full):
        r = rate(f) if callable(rate) else rate
        assert k == max(1, round(f * (1 - r)))
    back = unpack(packed, packed.tokens, 4)
    for i, (b, z) in enumerate(zip(back, latents)):
        tok_b, _ = spacetime_patchify(b, PATCH)
        tok_z, _ = spacetime_patchify(z, PATCH)
        keep = packed.keep[i]
        assert torch.equal(tok_b[keep], tok_z[keep])
        dropped = torch.ones(tok_b.shape[0], dtype=torch.bool)
        dropped[keep] = False
        assert tok_b[dropped].abs().sum() == 0  # dropped tokens come back as zeros
    # pack_like drops the very same tokens of another tensor with the same shapes
    targets = [z * 2 for z in latents]
    assert torch.equal(pack_like(packed, targets), packed.tokens * 2)
    # and positions follow the kept tokens
    s = packed.cu_seqlens.tolist()
    _, grid = spacetime_patchify(latents[0], PATCH)
    assert torch.equal(packed.pos[s[0] : s[1]], grid_positions(grid)[packed.keep[0]])


def test_dropping_is_reproducible_with_a_generator():
    latents, texts = _samples()
    a = pack(latents, texts, PATCH, drop_rate=0.5, generator=torch.Generator().manual_seed(3))
    b = pack(latents, texts, PATCH, drop_rate=0.5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a.keep, b.keep))


def test_plan_rows_first_fit_decreasing():
    lengths = [7, 5, 4, 3, 3, 2, 1, 10]
    rows = plan_rows(lengths, budget=10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert rows == [[7], [0, 3], [1, 2, 6], [4, 5]]  # FFD: 10 | 7+3 | 5+4+1 | 3+2
    assert len(rows) == -(-sum(lengths) // 10)  # optimal here


def test_errors_name_the_problem():
    latents, texts = _samples()
    with pytest.raises(ValueError, match=r"sample 1 has 12 tokens, more than the row token budget 10; .*"
                                         r"sequence parallelism \(parallel.sequence > 1"):
        plan_rows([3, 12], budget=10)
    with pytest.raises(ValueError, match="empty sample list"):
        pack([], [], PATCH)
    with pytest.raises(ValueError, match="latent 1 has 3 channels but latent 0 has 4: mismatched channels"):
        pack([latents[0], torch.randn(3, 1, 2, 2)], texts[:2], PATCH)
    with pytest.raises(
        ValueError, match="text embedding 1 has 5 dims but text embedding 0 has 6: mismatched dims"
    ):
        pack(latents[:2], [texts[0], torch.randn(2, 5)], PATCH)
    with pytest.raises(ValueError, match="2 latents but 1 text"):
        pack(latents[:2], texts[:1], PATCH)
    with pytest.raises(ValueError, match=r"drop rate must be in \[0, 1\), got 1.0"):
        pack(latents, texts, PATCH, drop_rate=1.0)
    packed = pack(latents, texts, PATCH)
    with pytest.raises(ValueError, match="latent 0 has size"):
        pack_like(packed, [torch.randn(4, 1, 1, 1)] + latents[1:])


def test_causal_packing_round_trips_and_counts_tokens():
    latents = [torch.randn(4, t, 4, 6) for t in (1, 2, 5)]
    texts = [torch.randn(3, 8) for _ in latents]
    packed = pack(latents, texts, (2, 2, 2), causal=True)
    assert packed.seqlens == [num_tokens(tuple(z.shape[1:]), (2, 2, 2), causal=True) for z in latents]
    assert packed.seqlens == [1 * 6, 2 * 6, 3 * 6]  # T = 1, 2, 5 -> 1 + ceil((T - 1) / 2) groups
    back = unpack(packed, packed.tokens, 4)
    assert all(torch.equal(a, b) for a, b in zip(back, latents))
    assert torch.equal(pack_like(packed, latents), packed.tokens)
