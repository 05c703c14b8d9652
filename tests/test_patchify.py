import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videodit.patchify import patch_grid, spacetime_patchify, spacetime_unpatchify


@settings(max_examples=60, deadline=None)
@given(
    C=st.integers(1, 4),
    T=st.integers(1, 7),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    patch=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
)
def test_round_trip_any_shape_and_tubelet(C, T, H, W, patch):
    latent = torch.randn(C, T, H, W)
    tokens, grid = spacetime_patchify(latent, patch)
    assert grid == patch_grid((T, H, W), patch)
    assert tokens.shape == (grid[0] * grid[1] * grid[2], C * patch[0] * patch[1] * patch[2])
    back = spacetime_unpatchify(tokens, grid, patch, C, size=(T, H, W))
    assert torch.equal(back, latent)
    padded = spacetime_unpatchify(tokens, grid, patch, C)  # no size: padded extent, zeros in the tail
    assert padded.shape == (C, grid[0] * patch[0], grid[1] * patch[1], grid[2] * patch[2])
    assert padded.sum() == pytest.approx(latent.sum().item(), abs=1e-4)


def test_token_layout_is_t_h_w_raster_with_channel_major_patches():
    latent = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    tokens, grid = spacetime_patchify(latent, (1, 2, 2))
    assert grid == (2, 2, 2)
    # token 1 is t=0, h=0, w=1: rows 0-1, columns 2-3 of frame 0, channel 0 first
    assert tokens[1].tolist() == [2, 3, 6, 7, 34, 35, 38, 39]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="patch must be three positive"):
        spacetime_patchify(torch.zeros(1, 2, 2, 2), (0, 1, 1))
    with pytest.raises(ValueError, match=r"must be \(C, T, H, W\)"):
        spacetime_patchify(torch.zeros(2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="do not match grid"):
        spacetime_unpatchify(torch.zeros(5, 4), (1, 2, 2), (1, 1, 1), 4)


@settings(max_examples=60, deadline=None)
@given(
    C=st.integers(1, 3),
    T=st.integers(1, 9),
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    patch=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
)
def test_causal_tubelet_round_trips_and_gives_frame_zero_its_own_tokens(C, T, H, W, patch):
    latent = torch.randn(C, T, H, W)
    tokens, grid = spacetime_patchify(latent, patch, causal=True)
    pt = patch[0]
    assert grid[0] == 1 + -(-(T - 1) // pt)
    assert grid == patch_grid((T, H, W), patch, causal=True)
    back = spacetime_unpatchify(tokens, grid, patch, C, size=(T, H, W), causal=True)
    assert torch.equal(back, latent)
    # changing frame 0 changes only the first temporal group's tokens, changing frame 1 never touches them
    per_group = grid[1] * grid[2]
    bumped = latent.clone()
    bumped[:, 0] += 1
    moved = (spacetime_patchify(bumped, patch, causal=True)[0] != tokens).any(dim=1)
    assert moved[:per_group].all() and not moved[per_group:].any()
    if T > 1:
        bumped = latent.clone()
        bumped[:, 1] += 1
        moved = (spacetime_patchify(bumped, patch, causal=True)[0] != tokens).any(dim=1)
        assert not moved[:per_group].any()


def test_causal_tubelet_is_the_plain_tubelet_when_pt_is_one():
    latent = torch.randn(2, 5, 4, 4)
    a, grid_a = spacetime_patchify(latent, (1, 2, 2))
    b, grid_b = spacetime_patchify(latent, (1, 2, 2), causal=True)
    assert grid_a == grid_b and torch.equal(a, b)
