"""LoRA on a Wan VideoDiT through peft: the saved file loads into diffusers' WanPipeline.load_lora_weights
and gives the transformer output of our merged model; applying LoRA files at a scale; LoRAs for another
base model; a merged fine-tune exported as a diffusers transformer folder."""

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file, save_file
from wan_tiny import WAN21, diffusers_transformer, save_pipeline

from videodit.lora import LoRAConfig, add_lora, apply_lora_files, merge_lora, parse_lora_spec, save_lora
from videodit.model import VideoDiT
from videodit.wan_diffusers import BLOCK_LINEARS, save_diffusers_transformer

SHAPES = [(2, 4, 6), (1, 6, 4), (2, 4, 6)]
TIMESTEPS = [900, 250, 40]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("wan") / "Wan-tiny-Diffusers")


@pytest.fixture(scope="module")
def lora_file(folder, tmp_path_factory):
    """A rank-4, alpha-8 LoRA on every block linear, with random (nonzero) A and B, saved; and the merged
    model it came from."""
    model = VideoDiT.from_pretrained(folder)
    add_lora(model, LoRAConfig(rank=4, alpha=8.0, target_modules=tuple(BLOCK_LINEARS)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    path = save_lora(model, tmp_path_factory.mktemp("lora") / "wan_lora.safetensors")
    return path, merge_lora(model).eval()


def _inputs():
    g = torch.Generator().manual_seed(2)
    latents = [torch.randn(16, *s, generator=g) for s in SHAPES]
    text = [torch.randn(n, 32, generator=g) for n in (5, 9, 3)]
    return latents, text, torch.tensor(TIMESTEPS)


def _assert_matches(ours: VideoDiT, transformer, scale: float | None = None):
    latents, text, steps = _inputs()
    with torch.no_grad():
        packed = ours.forward_samples(latents, steps.double() / 1000, text)
        for z, e, t, out in zip(latents, text, steps, packed):
            kwargs = {} if scale is None else {"attention_kwargs": {"scale": scale}}
            want = transformer(z[None], t[None], e[None], return_dict=False, **kwargs)[0][0]
            assert float((out - want).abs().max()) <= 1e-5


def test_saved_lora_loads_into_wanpipeline_and_matches_our_merged_model(folder, lora_file):
    path, merged = lora_file
    keys = load_file(str(path))
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in keys
    assert keys["transformer.blocks.1.attn2.to_v.lora_B.weight"].shape == (24, 4)
    pipe = WanPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(path))
    base = VideoDiT.from_pretrained(folder)
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(base.parameters(), merged.parameters()))
    assert diff > 1e-2  # the LoRA changed the weights
    _assert_matches(merged, pipe.transformer)
    # generation-time application of the same file at a scale equals diffusers' LoRA scale
    _assert_matches(apply_lora_files(VideoDiT.from_pretrained(folder), [(path, 1.0)]), pipe.transformer)
    _assert_matches(apply_lora_files(VideoDiT.from_pretrained(folder), [(path, 0.5)]), pipe.transformer, 0.5)


def test_original_wan_lora_layout_with_alpha_applies_the_same(folder, lora_file, tmp_path):
    """diffusion_model.blocks.i.self_attn.q.lora_down/lora_up + alpha, as trainers for the original code
    write it: alpha = 2 r with lora_up halved is the same update."""
    path, merged = lora_file
    names = {"attn1.": "self_attn.", "attn2.": "cross_attn.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.",
             "to_out.0.": "o.", "ffn.net.0.proj.": "ffn.0.", "ffn.net.2.": "ffn.2."}
    original = {}
    for key, value in load_file(str(path)).items():
        new = key.replace("transformer.", "diffusion_model.", 1)
        for a, b in names.items():
            new = new.replace(a, b)
        if new.endswith(".lora_B.weight"):
            original[new.replace(".lora_B.weight", ".lora_up.weight")] = value / 2
            original[new.replace(".lora_B.weight", ".alpha")] = torch.tensor(2.0 * value.shape[1])
        else:
            original[new.replace(".lora_A.weight", ".lora_down.weight")] = value
    save_file(original, str(tmp_path / "original.safetensors"))
    applied = apply_lora_files(VideoDiT.from_pretrained(folder), [(tmp_path / "original.safetensors", 1.0)])
    for (name, a), b in zip(applied.state_dict().items(), merged.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_lora_for_another_base_model_is_a_one_line_error(folder, tmp_path):
    wider = VideoDiT.from_pretrained(_save_transformer(tmp_path, dict(WAN21, attention_head_dim=16)))
    add_lora(wider, LoRAConfig(rank=2, alpha=2.0))
    other = save_lora(wider, tmp_path / "other.safetensors")
    model = VideoDiT.from_pretrained(folder)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="does not fit this model.*another base model") as e:
        apply_lora_files(model, [(other, 1.0)])
    assert "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # left unchanged
    deeper = VideoDiT.from_pretrained(_save_transformer(tmp_path, dict(WAN21, num_layers=3)))
    add_lora(deeper, LoRAConfig(rank=2, alpha=2.0))
    with pytest.raises(ValueError, match="block 2 but the model has blocks 0..1"):
        apply_lora_files(model, [(save_lora(deeper, tmp_path / "deeper.safetensors"), 1.0)])


def _save_transformer(tmp_path, config):
    path = tmp_path / f"transformer-{config['attention_head_dim']}-{config['num_layers']}"
    diffusers_transformer(config).save_pretrained(path)
    return path


def test_merged_fine_tune_exports_as_a_diffusers_transformer(lora_file, tmp_path):
    _, merged = lora_file
    save_diffusers_transformer(merged, tmp_path / "transformer")
    _assert_matches(merged, WanTransformer3DModel.from_pretrained(tmp_path / "transformer").eval())


def test_parse_lora_spec(tmp_path):
    f = tmp_path / "style.safetensors"
    f.write_bytes(b"")
    assert parse_lora_spec(str(f)) == (f, 1.0)
    assert parse_lora_spec(f"{f}:0.7") == (f, 0.7)
    with pytest.raises(ValueError, match="does not exist"):
        parse_lora_spec(str(tmp_path / "missing.safetensors:0.5"))
    with pytest.raises(ValueError, match="choose from"):
        LoRAConfig(target_modules=("to_q",))
