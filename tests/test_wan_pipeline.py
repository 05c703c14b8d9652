"""A diffusers WanPipeline folder through our parts: Wan text handling, and the packed Wan sampler's final
latents against diffusers' WanPipeline(..., latents=..., output_type="latent") on a tiny random pipeline."""

import json
import shutil

import pytest
import torch
from diffusers import WanPipeline
from wan_tiny import save_pipeline

from videodit.model import VideoDiT
from videodit.sampling import Request
from videodit.wan_pipeline import check_wan_pipeline, load_wan_pipeline
from videodit.wan_sampling import sample_wan
from videodit.wan_text import TEXT_LEN, encode_prompts


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("wan") / "Wan-tiny-Diffusers")


@pytest.fixture(scope="module")
def parts(folder):
    return load_wan_pipeline(folder)


@pytest.fixture(scope="module")
def reference(folder):
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_is_real_tokens_then_zero_rows_like_wanpipeline(parts, reference):
    prompts = ["a  dog in the &amp; snow", ""]
    ours = parts.encode(prompts)
    with torch.no_grad():
        theirs, _ = reference.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=512)
    real = encode_prompts(parts.text_encoder, prompts)
    assert [r.shape[0] for r in real] == [7, 1]  # "a dog in the & snow" + </s> ("&" is <unk>); "" is </s>
    for o, t, r in zip(ours, theirs, real):
        assert o.shape == (TEXT_LEN, 32)
        torch.testing.assert_close(o, t, rtol=0, atol=1e-5)
        assert float(o[r.shape[0]:].abs().max()) == 0.0 and float(o[: r.shape[0]].abs().min()) > 0.0


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_packed_sampler_equals_wanpipeline(parts, reference, guidance):
    """Two requests of different shapes denoised together equal diffusers run on each alone."""
    cases = [("a dog in the snow", "blurry low quality", (3, 4, 6), 32, 48, 9),
             ("a red ball", "", (2, 6, 4), 48, 32, 5)]
    gen = torch.Generator().manual_seed(3)
    noise = [torch.randn(16, *size, generator=gen) for _, _, size, *_ in cases]
    requests = []
    for prompt, negative, size, *_ in cases:
        text, neg = parts.encode([prompt, negative])
        requests.append(Request(size=size, text=text, negative=neg))
    ours = sample_wan(parts.transformer, requests, parts.scheduler_config, steps=4, guidance=guidance,
                      noise=noise, progress=False)
    for (prompt, negative, size, height, width, frames), z, out in zip(cases, noise, ours):
        want = reference(prompt=prompt, negative_prompt=negative, height=height, width=width,
                         num_frames=frames, num_inference_steps=4, guidance_scale=guidance,
                         latents=z[None].clone(), output_type="latent").frames[0]
        assert out.shape == want.shape == (16, *size)
        assert float((out - want).abs().max()) <= 1e-4
        assert float((want - z).abs().max()) > 0.1  # the sampler moved the latents


def test_sampler_follows_the_folders_flow_shift(parts, folder, tmp_path):
    """Another flow_shift in the scheduler config gives another result: the folder's value is used."""
    text, neg = parts.encode(["a dog", ""])
    noise = [torch.randn(16, 2, 4, 4)]
    req = [Request(size=(2, 4, 4), text=text, negative=neg)]
    a = sample_wan(parts.transformer, req, parts.scheduler_config, steps=3, noise=noise, progress=False)[0]
    shifted = {**parts.scheduler_config, "flow_shift": 8.0}
    b = sample_wan(parts.transformer, req, shifted, steps=3, noise=noise, progress=False)[0]
    assert float((a - b).abs().max()) > 1e-3


def test_pipeline_folder_parts(parts, folder):
    assert parts.transformer.config.in_channels == parts.vae.latent_channels == 16
    assert parts.scheduler_config["_class_name"] == "UniPCMultistepScheduler"
    direct = VideoDiT.from_pretrained(folder)  # a pipeline folder loads its transformer/
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(),
                                                 parts.transformer.state_dict().values()))


def _copy_with(folder, tmp_path, part, edit):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / part
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return copy


@pytest.mark.parametrize("part, edit, match", [
    ("model_index.json", lambda d: {**d, "_class_name": "WanImageToVideoPipeline"},
     "unsupported pipeline _class_name 'WanImageToVideoPipeline'; supported: WanPipeline"),
    ("model_index.json", lambda d: {**d, "boundary_ratio": 0.875}, "two-expert Wan2.2 A14B"),
    ("vae/config.json", lambda d: {**d, "z_dim": 48},
     "transformer in_channels=16 does not match the VAE's latent channels 48"),
    ("scheduler/scheduler_config.json", lambda d: {**d, "_class_name": "DDIMScheduler"},
     "unsupported scheduler _class_name 'DDIMScheduler'"),
])
def test_bad_pipeline_folder_is_a_one_line_error(folder, tmp_path, part, edit, match):
    bad = _copy_with(folder, tmp_path, part, edit)
    with pytest.raises(ValueError, match=match) as e:
        check_wan_pipeline(bad)
    assert "\n" not in str(e.value)


def test_sampler_needs_wan_text(parts):
    with pytest.raises(ValueError, match="padded prompt and negative-prompt text"):
        sample_wan(parts.transformer, [Request(size=(1, 2, 2), text=torch.zeros(TEXT_LEN, 32))],
                   parts.scheduler_config, steps=1, progress=False)
