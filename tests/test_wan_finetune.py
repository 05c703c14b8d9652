"""train_video.py fine-tuning a tiny random WanPipeline: a LoRA run whose file loads into diffusers'
WanPipeline.load_lora_weights and matches our merged model, exact resume of a LoRA run, a full fine-tune
whose export WanTransformer3DModel / WanPipeline load, the architecture taken from the folder, Wan text
dropout, and a 2-rank ZeRO-2 run (slow)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file
from test_data_fixtures import make_dataset
from wan_tiny import save_pipeline

import train_video
from videodit import wan_finetune
from videodit.flow import FlowConfig, flow_loss
from videodit.lora import LoRAConfig, merge_lora
from videodit.model import VideoDiT
from videodit.mp4 import read_mp4
from videodit.wan_text import TEXT_LEN

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(2, 4, 6), (1, 6, 4)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_train")
    return {"folder": save_pipeline(root / "Wan-tiny-Diffusers"),
            "manifest": make_dataset(root / "clips", num_clips=4)}


@pytest.fixture
def one_rank(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


def config(tmp_path) -> Path:
    """A fine-tuning config with no model section (the architecture comes from init_from)."""
    path = tmp_path / "wan.yaml"
    path.write_text("data:\n  row_tokens: 64\n  min_tokens: 8\n  max_tokens: 32\n  max_frames: 9\n"
                    "  window: 4\ntrain:\n  max_steps: 2\n  warmup_steps: 1\n  lr: 1.0e-3\n  ema_decay: 0.9\n"
                    "  log_every: 1\n  save_every: 0\nmodel:\n  grad_checkpointing: true\n")
    return path


def args(tmp_path, assets, out, **extra):
    sets = {"data.manifest": assets["manifest"], "train.init_from": assets["folder"], "train.output_dir": out,
            **extra}
    return ["--config", str(config(tmp_path)), *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]


def run(tmp_path, assets, out, **extra):
    train_video.main(args(tmp_path, assets, out, **extra))
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _inputs():
    g = torch.Generator().manual_seed(2)
    latents = [torch.randn(16, *s, generator=g) for s in SHAPES]
    text = [torch.randn(TEXT_LEN, 32, generator=g) for _ in SHAPES]
    return latents, text, torch.tensor([700, 150])


def _assert_same_output(ours: VideoDiT, transformer):
    latents, text, steps = _inputs()
    with torch.no_grad():
        packed = ours.forward_samples(latents, steps.double() / 1000, text)
        for z, e, t, out in zip(latents, text, steps, packed):
            want = transformer(z[None], t[None], e[None], return_dict=False)[0][0]
            assert float((out - want).abs().max()) <= 1e-5


def _ema_model(out: Path, folder: Path, lora: LoRAConfig) -> VideoDiT:
    """Our model from the last checkpoint's EMA shadow (LoRA layers merged)."""
    cfg = wan_finetune.wan_model_config(folder, train_video.architecture(train_video.ModelConfig()))
    model = wan_finetune.load_for_training(folder, cfg, lora)
    ckpt = out / "checkpoints" / (out / "checkpoints/latest").read_text()
    shadow = torch.load(ckpt / "ema_state.pt", weights_only=True)["shadow"]
    assert shadow and all("lora_" in k for k in shadow)  # the EMA tracks the trained parameters only
    model.load_state_dict(shadow, strict=False)
    return merge_lora(model).eval()


def test_lora_run_saves_a_file_wanpipeline_loads_with_our_merged_output(tmp_path, assets, one_rank):
    out = tmp_path / "lora"
    records = run(tmp_path, assets, out, **{"model.lora.rank": 2, "model.lora.alpha": 4.0})
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)
    log = (out / "train.log").read_text()
    assert "model architecture from" in log and "LoRA rank 2" in log
    lora = out / "ema" / wan_finetune.LORA_FILE
    keys = load_file(str(lora))
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in keys
    assert len(keys) == 2 * 2 * 8  # A and B, 2 blocks, 8 projections (the default targets)
    # only the LoRA layers trained: the base weights in the DeepSpeed checkpoint are the folder's
    state = torch.load(next((out / "checkpoints").glob("step*/mp_rank_00_model_states.pt")),
                       weights_only=False)["module"]
    base = VideoDiT.from_pretrained(assets["folder"]).state_dict()
    assert torch.equal(state["blocks.1.attn.qkv.base_layer.weight"].float(), base["blocks.1.attn.qkv.weight"])
    assert torch.equal(state["blocks.0.mlp.0.weight"].float(), base["blocks.0.mlp.0.weight"])
    pipe = WanPipeline.from_pretrained(assets["folder"])
    pipe.load_lora_weights(str(lora))
    ours = _ema_model(out, assets["folder"], LoRAConfig(rank=2, alpha=4.0))
    assert any(float(keys[k].abs().max()) > 0 for k in keys if "lora_B" in k)  # B moved off its zero init
    _assert_same_output(ours, pipe.transformer)


def test_lora_run_resumes_exactly(tmp_path, assets, one_rank):
    lora = {"model.lora.rank": 2, "model.lora.alpha": 4.0}
    full = run(tmp_path, assets, tmp_path / "full", **lora, **{"train.max_steps": 3})
    run(tmp_path, assets, tmp_path / "split", **lora, **{"train.max_steps": 2})
    split = run(tmp_path, assets, tmp_path / "split", **lora, **{"train.max_steps": 3})
    assert "resumed from" in (tmp_path / "split/train.log").read_text()
    assert split[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-6, abs=1e-7)
    a = load_file(str(tmp_path / "full/ema" / wan_finetune.LORA_FILE))
    b = load_file(str(tmp_path / "split/ema" / wan_finetune.LORA_FILE))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def test_full_fine_tune_exports_a_diffusers_transformer_and_pipeline(tmp_path, assets, one_rank):
    out = tmp_path / "full"
    run(tmp_path, assets, out)
    assert "full fine-tune" in (out / "train.log").read_text()
    theirs = WanTransformer3DModel.from_pretrained(out / "ema/transformer").eval()
    ours = VideoDiT.from_pretrained(out / "ema")  # the export is a WanPipeline folder
    base = VideoDiT.from_pretrained(assets["folder"])
    moved = max(float((a - b).abs().max()) for a, b in zip(ours.parameters(), base.parameters()))
    assert moved > 1e-5  # the weights were trained
    _assert_same_output(ours, theirs)
    pipe = WanPipeline.from_pretrained(out / "ema")
    assert pipe.vae is not None and pipe.tokenizer is not None


def test_architecture_comes_from_the_folder(tmp_path, assets, one_rank):
    with pytest.raises(ValueError, match=r"contradicts it: model.hidden_size=64 \(the folder has 24\)") as e:
        train_video.main(args(tmp_path, assets, tmp_path / "bad", **{"model.hidden_size": 64}))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="model.lora.rank=2 needs train.init_from a pretrained Wan"):
        train_video.main(["--set", "model.lora.rank=2", "--set", f"train.output_dir={tmp_path / 'x'}"])
    cfg = wan_finetune.wan_model_config(assets["folder"], train_video.architecture(
        train_video.ModelConfig(grad_checkpointing=True, hidden_size=24)))  # agreeing keys are fine
    assert cfg.grad_checkpointing and cfg.hidden_size == 24 and not cfg.null_text


def test_dropped_text_is_the_given_empty_text():
    """With empty_text, a sample whose text is dropped attends to it (Wan: the padded ""), not to nothing."""
    seen = {}

    class Model:
        config = type("Config", (), {"patch": (1, 2, 2), "prediction": "velocity"})

        def forward_packed(self, packed, t, **kwargs):
            seen["packed"] = packed
            return torch.zeros_like(packed.tokens, requires_grad=True)

    empty = torch.randn(TEXT_LEN, 8)
    texts = [torch.randn(TEXT_LEN, 8), torch.randn(TEXT_LEN, 8)]
    latents = [torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 4)]
    flow_loss(Model(), latents, texts, FlowConfig(text_drop_prob=1.0), torch.Generator().manual_seed(0),
              empty_text=empty)
    packed = seen["packed"]
    assert packed.text.shape == (2 * TEXT_LEN, 8)
    assert torch.equal(packed.text[:TEXT_LEN], empty) and torch.equal(packed.text[TEXT_LEN:], empty)


@pytest.mark.slow
def test_two_ranks_zero2_lora(tmp_path, assets):
    if shutil.which("deepspeed") is None:
        pytest.skip("deepspeed launcher not on PATH")
    out = tmp_path / "z2"
    cmd = ["deepspeed", "--num_accelerators", "2", "--master_port", "29712", "train_video.py",
           *args(tmp_path, assets, out, **{"model.lora.rank": 2, "deepspeed.zero_stage": 2})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "world size 2, ZeRO stage 2" in (out / "train.log").read_text()
    assert (out / "ema" / wan_finetune.LORA_FILE).is_file()


def test_precache_with_a_wan_pipeline_then_train_from_it(tmp_path, assets, one_rank):
    """Latents from the Wan VAE (vae3d's adapter), UMT5 text unpadded as Wan encodes it, the encoding of ""
    stored; a fine-tune from that cache pads them."""
    from data import precache as precache_cli
    from data.precache import EMPTY_TEXT, LatentCache
    from vae3d.io import load_vae
    from videodit.wan_pipeline import load_wan_pipeline
    from videodit.wan_text import encode_prompts, pad_text

    cache = tmp_path / "cache"
    precache_cli.main(["--manifest", str(assets["manifest"]), "--out", str(cache),
                       "--wan", str(assets["folder"]), "--max-tokens", "32", "--min-tokens", "8",
                       "--max-frames", "9"])
    source = LatentCache(cache)
    assert len(source) == 4 and (cache / EMPTY_TEXT).is_file()
    parts = load_wan_pipeline(assets["folder"], vae=False)
    sample = source.load(0)
    want = encode_prompts(parts.text_encoder, [sample["caption"]])[0]
    assert sample["text"].shape == want.shape and sample["text"].shape[0] < TEXT_LEN  # stored unpadded
    torch.testing.assert_close(sample["text"], want, rtol=0, atol=1e-5)
    empty = encode_prompts(parts.text_encoder, [""])[0]
    torch.testing.assert_close(LatentCache.empty_text(cache), pad_text(empty), rtol=0, atol=1e-5)
    assert sample["latent"].shape[0] == 16 == load_vae(assets["folder"] / "vae").latent_channels
    records = run(tmp_path, assets, tmp_path / "from_cache",
                  **{"data.cache": cache, "data.manifest": "", "train.max_steps": 1})
    assert records[0]["step"] == 1 and records[0]["loss"] == records[0]["loss"]
    no_empty = tmp_path / "no_empty"
    shutil.copytree(cache, no_empty)
    (no_empty / EMPTY_TEXT).unlink()
    with pytest.raises(ValueError, match="rebuild it with python -m data.precache --wan"):
        LatentCache.empty_text(no_empty)


def test_previews_of_a_wan_lora_run_as_mp4s_and_tensorboard_images(tmp_path, assets, one_rank):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "preview"
    run(tmp_path, assets, out, **{"model.lora.rank": 2, "train.max_steps": 2, "preview.every": 2,
                                  "preview.prompts": '["a dog in the snow", "a red ball"]',
                                  "preview.steps": 2})
    for i in range(2):
        video = read_mp4(out / "samples" / f"step00000002_{i}.mp4")
        assert video.shape == (5, 32, 32, 3)
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"preview/0", "preview/1"} <= set(events.Tags()["images"])
    images = events.Images("preview/0")
    assert [e.step for e in images] == [2] and images[0].height == 32 and images[0].width >= 3 * 32
