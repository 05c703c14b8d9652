import json

import pytest
import torch

from videodit.checkpoint import load_dit, save_dit
from videodit.model import DiTConfig, VideoDiT


def _model():
    model = VideoDiT(
        DiTConfig(in_channels=4, text_dim=8, hidden_size=24, depth=1, num_heads=2, rope="fractional")
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_round_trip_restores_config_weights_and_meta(tmp_path):
    model = _model()
    meta = {"vae": "some/vae", "flow": {"shift": 3.0}}
    save_dit(model, tmp_path / "ck", meta)
    loaded, got = load_dit(tmp_path / "ck")
    assert loaded.config == model.config and not loaded.training
    assert got["vae"] == "some/vae" and got["flow"] == {"shift": 3.0} and got["random_init"] is False
    z, e, t = [torch.randn(4, 2, 4, 6)], [torch.randn(3, 8)], torch.tensor([0.4])
    with torch.no_grad():
        assert torch.equal(model.eval().forward_samples(z, t, e)[0], loaded.forward_samples(z, t, e)[0])
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["dit"]["rope"] == "fractional"


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    save_dit(_model(), tmp_path / "ck", {})
    second = _model()
    save_dit(second, tmp_path / "ck", {"step": 2})
    # `ck` points at the one complete version; the older version and every temporary are gone
    version = (tmp_path / "ck").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", version.name])
    assert version.name.startswith(".ck.v-")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded, meta = load_dit(tmp_path / "ck", dtype=torch.bfloat16)
    assert meta["step"] == 2 and loaded.x_embedder.weight.dtype == torch.bfloat16


def test_default_without_shipped_weights_is_a_random_init_model_flagged_as_such(tmp_path, monkeypatch):
    import videodit.checkpoint

    monkeypatch.setattr(videodit.checkpoint, "DEFAULT_DIR", tmp_path / "nothing")
    model, meta = load_dit("default")
    assert meta["random_init"] is True and meta["vae"] == "default" and meta["text_encoder"] == "default"
    assert isinstance(model, VideoDiT)


def test_bad_paths_and_meta_are_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a DiT checkpoint folder"):
        load_dit(tmp_path)
    with pytest.raises(ValueError, match="meta must be JSON-serialisable"):
        save_dit(_model(), tmp_path / "x", {"bad": object()})
    assert not (tmp_path / "x").exists()
