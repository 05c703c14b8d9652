"""What generate.py writes: unique default names, no silent overwrite, atomic mp4s (an interrupted write
leaves the old file whole), a sidecar .json per video, a .png for a still, and packed passes that each
fit the memory it is given."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate
import videodit.pipeline as pipeline
from vae3d.config import VAEConfig
from vae3d.io import save_vae
from vae3d.model import CausalVAE3D
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import Mp4Writer, read_mp4, write_mp4
from videodit.video_request import default_out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    vae = save_vae(CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))),
                   root / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2))
    return save_dit(dit, root / "dit", {"vae": str(vae), "text_encoder": "default", "random_init": True,
                                        "sampling": {"steps": 1, "cfg": 2.0}})


def test_default_names_differ_per_request_and_repeat_for_the_same_one():
    """Prompts in any script get names of their own, and so do prompts that differ only in case and
    punctuation ("a red ball!", "A red ball?")."""
    prompts = ["собака бежит по снегу", "кошка спит", "雪の中を走る犬", "海の上の船", "a red ball!",
               "A red ball?"]
    names = [default_out(p, 0) for p in prompts]
    assert len(set(names)) == len(names)
    assert names[0].name.startswith("собака-бежит-по-снегу-") and names[2].name.startswith("雪の中を走る犬-")
    assert names[4].name.startswith("a-red-ball-") and names[5].name.startswith("a-red-ball-")
    assert default_out("a red ball!", 0) == names[4]  # the same request, the same name
    assert default_out("a red ball!", 1) != names[4]  # another seed is another request
    assert default_out("a red ball!", 0, {"steps": "8"}) != names[4]  # so are other settings
    assert default_out("!!!", 0).name.startswith("video-")


def test_outputs_are_never_overwritten_silently(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--prompt", "a red ball", "--frames", "1", "--res", "16x24", "--ckpt", str(ckpt)]
    assert generate.main(argv) == 0
    written = sorted(Path("outputs").iterdir())
    assert [p.suffix for p in written] == [".json", ".mp4", ".png"]
    stamp = [p.read_bytes() for p in written]
    assert generate.main(argv) == 2  # the same request again: the same name, which exists
    assert "--overwrite" in capsys.readouterr().err
    assert [p.read_bytes() for p in written] == stamp
    assert generate.main([*argv, "--overwrite"]) == 0
    assert sorted(Path("outputs").iterdir()) == written
    assert generate.main([*argv, "--seed", "1"]) == 0  # another request: another name beside it
    assert len(list(Path("outputs").glob("*.mp4"))) == 2


def test_sidecar_records_what_reproduces_the_video_and_a_still_gets_a_png(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "still.mp4"
    given = []
    real_write = Mp4Writer.write
    monkeypatch.setattr(Mp4Writer, "write", lambda self, frames: given.append(frames.clone()) or
                        real_write(self, frames))
    argv = ["--prompt", "a red ball", "--negative-prompt", "blur", "--frames", "1", "--res", "16x24",
            "--seed", "7", "--fps", "12", "--ckpt", str(ckpt), "--out", str(out)]
    assert generate.main(argv) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["request"] == {"prompt": "a red ball", "negative_prompt": "blur", "frames": 1, "res": "16x24",
                               "fps": 12.0, "seed": 7}
    assert side["seed"] == 7 and side["sampling"]["steps"] == 1 and side["sampling"]["cfg"] == 2.0
    weights = (ckpt / "model.safetensors").read_bytes()
    assert side["checkpoint"]["sha256"] == hashlib.sha256(weights).hexdigest()
    png = np.asarray(Image.open(out.with_suffix(".png")))
    assert read_mp4(out).shape == (1, 16, 24, 3)
    assert np.array_equal(png, given[0][0])  # exactly the frame the mp4 was given (the mp4 is lossy)
    (tmp_path / "clip.mp4").unlink(missing_ok=True)
    assert generate.main([*argv[:-2], "--frames", "5", "--out", str(tmp_path / "clip.mp4")]) == 0
    assert not (tmp_path / "clip.png").exists() and (tmp_path / "clip.json").is_file()


def test_an_interrupted_mp4_write_leaves_the_existing_file_whole(tmp_path):
    """A write interrupted part-way leaves the existing video byte for byte, and no temporary file."""
    out = tmp_path / "v.mp4"
    write_mp4(out, np.full((4, 16, 16, 3), 50, np.uint8), fps=8)
    before = out.read_bytes()
    with pytest.raises(RuntimeError), Mp4Writer(out, 8, 16, 16) as writer:
        writer.write(np.zeros((3, 16, 16, 3), np.uint8))
        raise RuntimeError("interrupted")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    write_mp4(out, np.zeros((2, 16, 16, 3), np.uint8), fps=8)  # a finished write replaces it whole
    assert read_mp4(out).shape == (2, 16, 16, 3)


def test_a_prompts_file_is_split_into_packed_passes_that_each_fit(tmp_path, capsys, monkeypatch):
    """Under a memory limit that holds one request's pass but not two, each request gets its own passes;
    without it, all share one."""
    from videodit import budget
    from videodit.footprint import footprint

    torch.manual_seed(0)
    vae = save_vae(CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))),
                   tmp_path / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=256, depth=1, num_heads=4,
                             patch=(1, 1, 1)))
    ckpt = save_dit(dit, tmp_path / "dit", {"vae": str(vae), "text_encoder": "default", "random_init": True})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("a", "b", "c")))
    fp, _ = footprint(str(ckpt))
    tokens, need = budget.request_tokens_and_bytes(1, 128, 128, fp)
    assert tokens == 512  # 16 x 16 latent cells, conditional and unconditional
    limit = (budget.BASE_BYTES + fp.weight_bytes + 700 * fp.dit.token_bytes) / budget.GIB
    assert need < limit * budget.GIB
    calls = []
    real = VideoDiT.forward_samples
    monkeypatch.setattr(VideoDiT, "forward_samples", lambda self, z, *a, **k: calls.append(len(z)) or
                        real(self, z, *a, **k))
    argv = ["--prompts-file", str(prompts), "--frames", "1", "--res", "128x128", "--steps", "1", "--cfg", "2",
            "--ckpt", str(ckpt)]
    assert generate.main([*argv, "--out", str(tmp_path / "one"), "--max-memory-gb", str(limit)]) == 0
    assert calls == [2, 2, 2]  # three passes of one request (cond + uncond) each, not one of all three
    assert generate.main([*argv, "--out", str(tmp_path / "none"), "--max-memory-gb",
                          str(need / budget.GIB * 0.9)]) == 2  # one request alone does not fit
    assert "0000.mp4 (1 frames of 128x128) needs about" in capsys.readouterr().err


def test_an_init_image_is_resized_before_it_is_repeated(tmp_path):
    """A 6000x6000 image given for 300 frames is resized first and repeated at the request's size (at its
    own size the repeats would take 32 GB)."""
    from videodit.video_reader import first_frames

    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(tmp_path / "huge.png")
    frames = first_frames(tmp_path / "huge.png", 300, repeat_image=False)
    assert frames.shape == (1, 6000, 6000, 3)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident memory
    pixels = pipeline.init_pixels(frames, (76, 8, 8), 4, 8)
    status = open("/proc/self/status").read().splitlines()
    peak_mib = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024
    assert pixels.shape == (3, 301, 64, 64) and torch.equal(pixels[:, 0], pixels[:, -1])
    assert peak_mib < 3000
