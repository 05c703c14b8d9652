"""Wan transformers in VideoDiT: loading diffusers and original-layout folders, packed equivalence with
diffusers' WanTransformer3DModel run per sample, export back to diffusers, and the unsupported-folder errors.

VideoDiT's t in [0, 1] is diffusers' timestep / 1000."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file
from wan_tiny import WAN21, WAN22_TI2V, diffusers_transformer

from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT
from videodit.wan_diffusers import save_diffusers_transformer, wan_dit_config

SHAPES = [(3, 6, 8), (1, 4, 4), (2, 10, 6), (3, 6, 8), (1, 2, 12)]  # latent (T, h, w); two repeat
TEXT_LENS = [7, 3, 32, 5, 1]
TIMESTEPS = [999, 1, 500, 731, 0]  # diffusers' integer timesteps


def _inputs(config: dict, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(config["in_channels"], *s, generator=g) for s in SHAPES]
    text = [torch.randn(n, config["text_dim"], generator=g) for n in TEXT_LENS]
    return latents, text, torch.tensor(TIMESTEPS)


def _assert_matches_diffusers(ours: VideoDiT, ref: WanTransformer3DModel, config: dict, per_token=False):
    latents, text, steps = _inputs(config)
    with torch.no_grad():
        packed = ours.forward_samples(latents, steps.double() / 1000, text)  # all samples in one sequence
        for z, e, t, out in zip(latents, text, steps, packed):
            if per_token:  # Wan2.2 TI2V's pipeline feeds one timestep per token (all equal for t2v)
                t = t.expand(1, z.shape[1] * (z.shape[2] // 2) * (z.shape[3] // 2))
            else:
                t = t[None]
            want = ref(z[None], t, e[None], return_dict=False)[0][0]
            assert out.shape == want.shape
            assert float((out - want).abs().max()) <= 1e-5


@pytest.mark.parametrize("config", [WAN21, WAN22_TI2V], ids=["wan2.1-t2v", "wan2.2-ti2v"])
def test_packed_forward_equals_diffusers_per_sample(tmp_path, config):
    ref = diffusers_transformer(config)
    ref.save_pretrained(tmp_path / "transformer")
    ours = VideoDiT.from_pretrained(tmp_path / "transformer")
    assert ours.config.in_channels == config["in_channels"] and not ours.training
    _assert_matches_diffusers(ours, ref, config, per_token=config is WAN22_TI2V)


def test_sharded_folder_with_index_loads_the_same_weights(tmp_path):
    ref = diffusers_transformer(WAN21)
    ref.save_pretrained(tmp_path / "single")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    a = VideoDiT.from_pretrained(tmp_path / "single").state_dict()
    b = VideoDiT.from_pretrained(tmp_path / "sharded").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _to_original_keys(state: dict) -> dict:
    """diffusers names -> the original Wan layout's: the inverse of diffusers' single-file conversion."""
    top = {"condition_embedder.text_embedder.linear_1": "text_embedding.0",
           "condition_embedder.text_embedder.linear_2": "text_embedding.2",
           "condition_embedder.time_embedder.linear_1": "time_embedding.0",
           "condition_embedder.time_embedder.linear_2": "time_embedding.2",
           "condition_embedder.time_proj": "time_projection.1",
           "proj_out": "head.head", "scale_shift_table": "head.modulation"}
    block = {"attn1.": "self_attn.", "attn2.": "cross_attn.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.",
             "to_out.0.": "o.", "norm2.": "norm3.", "ffn.net.0.proj.": "ffn.0.", "ffn.net.2.": "ffn.2.",
             "scale_shift_table": "modulation"}
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith("blocks."):
            for a, b in block.items():
                new = new.replace(a, b)
        else:
            for a, b in top.items():
                if key.startswith(a):
                    new = b + key[len(a):]
        out["model.diffusion_model." + new] = value
    return out


def test_original_wan_layout_loads_and_matches_diffusers(tmp_path):
    ref = diffusers_transformer(WAN21)
    theirs = {k: v.clone() for k, v in ref.state_dict().items()}
    original = _to_original_keys(theirs)
    # the test's inverse is exact: diffusers' own conversion takes it back to diffusers' names
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], theirs[k]) for k in theirs)
    folder = tmp_path / "Wan2.1-T2V-tiny"
    folder.mkdir()
    names = sorted(original)
    half = len(names) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: original[k].contiguous() for k in keys}, str(folder / file))
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 24, "eps": 1e-06, "ffn_dim": 40,
        "freq_dim": 32, "in_dim": 16, "model_type": "t2v", "num_heads": 2, "num_layers": 2, "out_dim": 16,
        "text_len": 512, "text_dim": 32}))
    _assert_matches_diffusers(VideoDiT.from_pretrained(folder), ref, WAN21)


def test_export_as_diffusers_folder_round_trips(tmp_path):
    ref = diffusers_transformer(WAN22_TI2V)
    ref.save_pretrained(tmp_path / "in")
    ours = VideoDiT.from_pretrained(tmp_path / "in")
    with torch.no_grad():  # a "fine-tune": new weights everywhere
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_diffusers_transformer(ours, tmp_path / "out")
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "out").eval()
    _assert_matches_diffusers(ours, loaded, WAN22_TI2V)
    assert wan_dit_config(loaded.config) == ours.config


def test_our_checkpoint_folder_dispatches_to_load_dit(tmp_path):
    model = VideoDiT(DiTConfig(in_channels=4, text_dim=8, hidden_size=24, depth=1, num_heads=2))
    save_dit(model, tmp_path / "ours")
    loaded = VideoDiT.from_pretrained(tmp_path / "ours")
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_export_refuses_our_own_architecture(tmp_path):
    with pytest.raises(ValueError, match="Wan's architecture options"):
        save_diffusers_transformer(VideoDiT(DiTConfig()), tmp_path / "x")


def test_unsupported_architecture_names_its_class_and_the_supported_ones(tmp_path):
    (tmp_path / "cog").mkdir()
    (tmp_path / "cog" / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel"}))
    with pytest.raises(ValueError, match="CogVideoXTransformer3DModel.*WanTransformer3DModel.*WanModel") as e:
        VideoDiT.from_pretrained(tmp_path / "cog")
    assert "\n" not in str(e.value)
    (tmp_path / "i2v").mkdir()
    (tmp_path / "i2v" / "config.json").write_text(json.dumps({**WAN21, "_class_name": "WanTransformer3DModel",
                                                               "image_dim": 1280, "added_kv_proj_dim": 24}))
    with pytest.raises(ValueError, match="image-to-video"):
        VideoDiT.from_pretrained(tmp_path / "i2v")
    (tmp_path / "flf").mkdir()
    (tmp_path / "flf" / "config.json").write_text(json.dumps({"_class_name": "WanModel",
                                                               "model_type": "i2v"}))
    with pytest.raises(ValueError, match="model_type 'i2v' is not supported; supported: t2v, ti2v"):
        VideoDiT.from_pretrained(tmp_path / "flf")
