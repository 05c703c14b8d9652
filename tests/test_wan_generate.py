"""generate.py on a diffusers WanPipeline folder: mp4s of the asked sizes from one packed pass per step,
latents equal to diffusers' WanPipeline for the same initial latents, LoRAs at generation time, and
one-line errors for unsupported folders, options and LoRAs."""

import json
import shutil

import pytest
import torch
from diffusers import WanPipeline
from wan_tiny import WAN21, diffusers_transformer, save_pipeline

import generate
import videodit.pipeline as pipeline
from videodit.lora import LoRAConfig, add_lora, save_lora
from videodit.model import VideoDiT
from videodit.mp4 import read_mp4
from videodit.sampling import initial_noise
from videodit.video_request import VideoRequest

CASES = [  # prompt, negative prompt, frames, height, width, seed
    ("a dog in the snow", "blurry low quality", 9, 32, 48, 4),
    ("a red ball", "", 5, 48, 32, 7),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("wan") / "Wan-tiny-Diffusers")


@pytest.fixture(scope="module")
def reference(folder):
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lora_file(folder, tmp_path_factory):
    model = VideoDiT.from_pretrained(folder)
    add_lora(model, LoRAConfig(rank=2, alpha=4.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    return save_lora(model, tmp_path_factory.mktemp("lora") / "style.safetensors")


def _requests(tmp_path):
    return [VideoRequest(p, f, h, w, s, n, tmp_path / f"{i}.mp4")
            for i, (p, n, f, h, w, s) in enumerate(CASES)]


def _diffusers_latents(pipe, requests, steps, guidance, lora_scale=None):
    out = []
    for r in requests:
        size = (1 + (r.frames - 1) // 4, r.height // 8, r.width // 8)
        extra = {} if lora_scale is None else {"attention_kwargs": {"scale": lora_scale}}
        out.append(pipe(prompt=r.prompt, negative_prompt=r.negative_prompt, height=r.height, width=r.width,
                        num_frames=r.frames, num_inference_steps=steps, guidance_scale=guidance,
                        latents=initial_noise(16, size, r.seed)[None], output_type="latent",
                        **extra).frames[0])
    return out


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_pipeline_latents_equal_wanpipeline(folder, reference, tmp_path, guidance):
    pipe = pipeline.load_pipeline(str(folder), device="cpu", dtype="float32")
    assert pipe.scheduler is not None and pipe.meta["sampling"] == {"steps": 50, "cfg": 5.0}
    requests = _requests(tmp_path)
    settings = pipeline.sampling_settings(pipe.meta, steps=3, cfg=guidance)
    ours = pipeline.sample_latents(pipe, requests, settings, progress=False)
    for z, want in zip(ours, _diffusers_latents(reference, requests, 3, guidance)):
        assert z.shape == want.shape[-4:]
        assert float((z - want).abs().max()) <= 1e-4


def test_generate_main_writes_mp4s_from_one_packed_pass_per_step(folder, tmp_path, monkeypatch):
    lines = [json.dumps({"prompt": p, "negative_prompt": n, "frames": f, "res": f"{h}x{w}"})
             for p, n, f, h, w, _ in CASES]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    calls = []
    forward = VideoDiT.forward_samples

    def counting(self, latents, *args, **kwargs):
        calls.append([tuple(z.shape) for z in latents])
        return forward(self, latents, *args, **kwargs)

    monkeypatch.setattr(VideoDiT, "forward_samples", counting)
    code = generate.main(["--ckpt", str(folder), "--prompts-file", str(tmp_path / "requests.jsonl"),
                          "--out", str(tmp_path / "out"), "--steps", "3", "--device", "cpu"])
    assert code == 0
    assert len(calls) == 3 and len(calls[0]) == 4  # both requests, conditional and unconditional, per pass
    assert {s[1:] for s in calls[0]} == {(3, 4, 6), (2, 6, 4)}
    for i, (_, _, frames, height, width, _) in enumerate(CASES):
        video = read_mp4(tmp_path / "out" / f"{i:04d}.mp4")
        assert video.shape == (frames, height, width, 3)


def test_lora_at_generation_time_equals_diffusers_load_lora_weights(folder, lora_file, tmp_path):
    pipe = pipeline.load_pipeline(str(folder), device="cpu", dtype="float32")
    from videodit.lora import apply_lora_files

    apply_lora_files(pipe.dit, [(lora_file, 0.5)])
    requests = _requests(tmp_path)[:1]
    ours = pipeline.sample_latents(pipe, requests, pipeline.sampling_settings(pipe.meta, steps=2),
                                   progress=False)
    ref = WanPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(lora_file))
    want = _diffusers_latents(ref, requests, 2, 5.0, lora_scale=0.5)
    assert float((ours[0] - want[0]).abs().max()) <= 1e-4


def test_generate_lora_flag_changes_the_video(folder, lora_file, tmp_path):
    base = ["--ckpt", str(folder), "--prompt", "a dog", "--frames", "5", "--res", "32x32", "--steps", "2",
            "--device", "cpu"]
    assert generate.main(base + ["--out", str(tmp_path / "plain.mp4")]) == 0
    assert generate.main(base + ["--out", str(tmp_path / "lora.mp4"), "--lora", f"{lora_file}:2"]) == 0
    plain, styled = read_mp4(tmp_path / "plain.mp4"), read_mp4(tmp_path / "lora.mp4")
    assert plain.shape == styled.shape == (5, 32, 32, 3)
    assert int(abs(plain.astype(int) - styled.astype(int)).max()) > 0


def _one_line_error(argv, capsys) -> str:
    assert generate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("generate.py: error:") and "\n" not in err
    return err


def test_wan_errors_are_one_line(folder, tmp_path, capsys):
    out = ["--prompt", "a dog", "--frames", "5", "--res", "32x32", "--out", str(tmp_path / "x.mp4"),
           "--device", "cpu"]
    err = _one_line_error(["--ckpt", str(folder), "--sampler", "heun", "--cfg-interval", "0,0.5"] + out,
                          capsys)
    assert "Wan pipeline folder" in err and "--sampler, --cfg-interval" in err
    i2v = _one_line_error(["--ckpt", str(folder), "--image", str(tmp_path / "missing.png")] + out, capsys)
    assert "missing.png" in i2v
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanImageToVideoPipeline"}))
    err = _one_line_error(["--ckpt", str(other)] + out, capsys)
    assert "'WanImageToVideoPipeline'" in err and "supported: WanPipeline" in err
    # a LoRA made for a wider Wan does not fit this one
    wider = tmp_path / "wider"
    diffusers_transformer(dict(WAN21, attention_head_dim=16)).save_pretrained(wider)
    model = add_lora(VideoDiT.from_pretrained(wider), LoRAConfig(rank=2, alpha=2.0))
    lora = save_lora(model, tmp_path / "wider.safetensors")
    err = _one_line_error(["--ckpt", str(folder), "--lora", str(lora)] + out, capsys)
    assert "does not fit this model" in err and "another base model" in err
    err = _one_line_error(["--ckpt", str(folder), "--lora", str(tmp_path / "nope.safetensors:0.5")] + out,
                          capsys)
    assert "nope.safetensors' does not exist" in err
