"""DiTConfig's architecture options: the default architecture and the shipped checkpoint are unchanged by
them, and each option builds the parameters and behaviour it names."""

import hashlib

import pytest
import torch
from safetensors import safe_open

from videodit.checkpoint import DEFAULT_DIR, WEIGHTS_FILE, load_dit
from videodit.model import DiTConfig, VideoDiT


def _inputs(channels: int, text_dim: int):
    g = torch.Generator().manual_seed(1234)
    latents = [torch.randn(channels, 3, 8, 12, generator=g), torch.randn(channels, 2, 8, 4, generator=g)]
    text = [torch.randn(5, text_dim, generator=g), torch.zeros(0, text_dim)]  # the second: null token
    return latents, torch.tensor([0.3, 0.85]), text


def _digest(outs: list[torch.Tensor]) -> list[list[float]]:
    """Sum, absolute sum and six evenly spaced values of each output."""
    rows = []
    for o in outs:
        f = o.flatten()
        idx = torch.linspace(0, f.numel() - 1, 6).long()
        rows.append([float(f.sum()), float(f.abs().sum()), *[float(v) for v in f[idx]]])
    return rows


# Recorded from the shipped weights (same inputs as `_inputs`); re-record when the default is retrained.
SHIPPED_DIGEST = [
    [-0.9866924, 1589.032, -0.5176252, 0.04963678, 0.6025753, -0.1200946, -0.7136543, 0.02228615],
    [-8.383844, 319.7052, -0.1967667, 0.5107973, 0.2533661, -0.3263095, 0.6019669, 0.270049],
]
XS_DIGEST = [
    [2850.53149, 39172.39062, -3.735347, -5.307632, 9.789219, 22.558273, -0.277509, 4.616042],
    [-449.56552, 5449.48438, -2.858391, 8.237223, 3.233736, -2.431581, 10.281628, -2.602326],
]


# Recorded the same way: the (key, shape) list of VideoDiT(DiTConfig()) and its parameters' absolute sum
# after torch.manual_seed(3).
DEFAULT_KEYS_SHA1 = "636935a649c1097e57961be8cd4379fd1e18f67d"
DEFAULT_INIT_ABS_SUM = 11085.103475608943


def _assert_digest(outs, expected):
    for got, want in zip(_digest(outs), expected):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=2e-4)


def test_shipped_default_keys_and_outputs_unchanged():
    model, _ = load_dit("default")
    with safe_open(str(DEFAULT_DIR / WEIGHTS_FILE), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == stored
    latents, t, text = _inputs(model.config.in_channels, model.config.text_dim)
    with torch.no_grad():
        _assert_digest(model.forward_samples(latents, t, text), SHIPPED_DIGEST)


def test_default_config_keys_init_and_outputs_unchanged():
    torch.manual_seed(3)
    model = VideoDiT(DiTConfig())
    state = model.state_dict()
    listing = repr([(k, tuple(v.shape)) for k, v in state.items()])
    assert hashlib.sha1(listing.encode()).hexdigest() == DEFAULT_KEYS_SHA1, listing
    assert float(sum(v.double().abs().sum() for v in state.values())) == pytest.approx(DEFAULT_INIT_ABS_SUM,
                                                                                       rel=1e-12)
    g = torch.Generator().manual_seed(7)
    for k in sorted(state):
        state[k].copy_(torch.randn(state[k].shape, generator=g) * 0.2)
    latents, t, text = _inputs(16, 384)
    with torch.no_grad():
        _assert_digest(model.forward_samples(latents, t, text), XS_DIGEST)


WAN_LIKE = dict(in_channels=4, text_dim=12, hidden_size=24, depth=2, num_heads=2, modulation="shared",
                text_pooling=False, null_text=False, qk_norm="across_heads", ffn_dim=40)


def test_wan_options_build_their_parameters():
    model = VideoDiT(DiTConfig(**WAN_LIKE))
    state = model.state_dict()
    assert state["time_proj.1.weight"].shape == (6 * 24, 24)
    assert state["blocks.1.modulation"].shape == (6, 24) and state["final_layer.modulation"].shape == (2, 24)
    assert state["blocks.0.attn.q_norm.weight"].shape == (24,)
    assert state["blocks.0.cross.k_norm.weight"].shape == (24,)
    assert state["blocks.0.mlp.0.weight"].shape == (40, 24)
    assert "null_text" not in state and not any("adaLN" in k for k in state)


def test_wan_options_fresh_model_predicts_zero_and_packs_like_single_samples():
    model = VideoDiT(DiTConfig(**WAN_LIKE)).eval()
    latents = [torch.randn(4, 2, 6, 4), torch.randn(4, 1, 4, 8)]
    text = [torch.randn(7, 12), torch.randn(3, 12)]
    t = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        assert all(float(o.abs().max()) == 0.0 for o in model.forward_samples(latents, t, text))
        for p in model.parameters():
            p.normal_(0, 0.3)
        packed = model.forward_samples(latents, t, text)
        for i in range(2):
            alone = model.forward_samples([latents[i]], t[i: i + 1], [text[i]])[0]
            torch.testing.assert_close(packed[i], alone, rtol=1e-5, atol=1e-5)
        # the per-block table is live: changing one block's table changes the output
        model.blocks[0].modulation.add_(0.5)
        assert not torch.allclose(model.forward_samples(latents, t, text)[0], packed[0])


@pytest.mark.parametrize("field, value, match", [
    ("modulation", "table", "modulation must be"),
    ("qk_norm", "layer", "qk_norm must be"),
    ("ffn_dim", -1, "ffn_dim must be >= 0"),
])
def test_bad_wan_option_is_a_one_line_error(field, value, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**{field: value})
