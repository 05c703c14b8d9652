"""generate.py and videodit.pipeline: input validation (one line, no traceback), sampling settings, init
videos, end to end on a tiny checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import generate
import videodit.pipeline as pipeline
from vae3d.config import VAEConfig
from vae3d.io import load_vae, save_vae
from vae3d.model import CausalVAE3D
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import read_mp4, write_mp4
from videodit.video_reader import first_frames
from videodit.video_request import VideoRequest

REPO = Path(__file__).resolve().parents[1]


# ---- validation through main() -------------------------------------------------------------------------
def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": "b", "res": "0x10"}\n')
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    short = tmp_path / "short.mp4"
    if not short.exists():
        write_mp4(short, np.zeros((3, 16, 16, 3), np.uint8), fps=8)
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "a"}\n')
    orphan = tmp_path / "orphan_strength.jsonl"
    lines = [{"prompt": "a", "init_video": str(short)}, {"prompt": "b", "strength": 0.5}]
    orphan.write_text("\n".join(json.dumps(x) for x in lines))
    return {
        "strength without init": ["--prompt", "a", "--strength", "0.5"],
        "strength 0": ["--prompt", "a", "--init-video", str(short), "--strength", "0"],
        "strength 1.5": ["--prompt", "a", "--init-video", str(short), "--strength", "1.5"],
        "missing init video": ["--prompt", "a", "--init-video", str(tmp_path / "nope.mp4")],
        "unreadable init video": ["--prompt", "a", "--init-video", str(junk)],
        "init video too short": ["--prompt", "a", "--init-video", str(short), "--frames", "9"],
        "line strength without init": ["--prompts-file", str(orphan), "--out", str(tmp_path / "o2")],
        "file strength without any init": ["--prompts-file", str(plain), "--strength", "0.5", "--out",
                                           str(tmp_path / "o3")],
        "res abc": ["--prompt", "a", "--res", "abc"],
        "res 0x128": ["--prompt", "a", "--res", "0x128"],
        "frames 0": ["--prompt", "a", "--frames", "0"],
        "frames -4": ["--prompt", "a", "--frames", "-4"],
        "frames text": ["--prompt", "a", "--frames", "ten"],
        "steps -1": ["--prompt", "a", "--steps", "-1"],
        "seed -1": ["--prompt", "a", "--seed", "-1"],
        "fps -2": ["--prompt", "a", "--fps", "-2"],
        "cfg 0": ["--prompt", "a", "--cfg", "0"],
        "cfg interval reversed": ["--prompt", "a", "--cfg-interval", "0.8,0.2"],
        "cfg interval one number": ["--prompt", "a", "--cfg-interval", "0.5"],
        "cfg interval above 1": ["--prompt", "a", "--cfg-interval", "0,2"],
        "skip guidance -1": ["--prompt", "a", "--skip-guidance", "-1"],
        "skip blocks text": ["--prompt", "a", "--skip-blocks", "two"],
        "sampler": ["--prompt", "a", "--sampler", "ddim"],
        "missing ckpt": ["--prompt", "a", "--ckpt", str(tmp_path / "no_ckpt")],
        "missing vae": ["--prompt", "a", "--vae", str(tmp_path / "no_vae")],
        "unwritable out": ["--prompt", "a", "--out", str(blocker / "x.mp4")],
        "out not mp4": ["--prompt", "a", "--out", str(tmp_path / "x.avi")],
        "no prompt": [],
        "both": ["--prompt", "a", "--prompts-file", str(prompts)],
        "bad prompts line": ["--prompts-file", str(prompts), "--out", str(tmp_path / "o")],
        "missing prompts file": ["--prompts-file", str(tmp_path / "nope.jsonl")],
        "unknown flag": ["--prompt", "a", "--width", "3"],
        "missing image": ["--prompt", "a", "--image", str(tmp_path / "nope.png")],
        "unreadable image": ["--prompt", "a", "--image", str(junk), "--frames", "5"],
        "image with one frame": ["--prompt", "a", "--image", str(short), "--frames", "1"],
        "image and extend": ["--prompt", "a", "--image", str(short), "--extend", str(short)],
        "image and init video": ["--prompt", "a", "--image", str(short), "--init-video", str(short)],
        "extend longer than frames": ["--prompt", "a", "--extend", str(short), "--frames", "2", "--fps", "8"],
        "unreadable extend clip": ["--prompt", "a", "--extend", str(junk), "--frames", "9"],
    }


def test_bad_input_one_line_nonzero_in_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a: pytest.fail("a model was loaded for bad input"))
    for case, argv in _bad_inputs(tmp_path).items():
        assert generate.main(argv) == 2, case
        out, err = capsys.readouterr()
        assert out == "", case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("generate.py: error: "), (case, err)
    _, err = capsys.readouterr()
    generate.main(["--prompts-file", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")])
    assert "bad.jsonl:2:" in capsys.readouterr().err
    generate.main(["--prompt", "a", "--ckpt", str(tmp_path / "no_ckpt")])
    assert "no_ckpt" in capsys.readouterr().err


def test_bad_init_video_input_names_the_problem(tmp_path, capsys, monkeypatch):
    """Video-to-video input errors say what is wrong, before any model is loaded."""
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a: pytest.fail("a model was loaded for bad input"))
    cases = _bad_inputs(tmp_path)
    expected = {
        "strength without init": "--strength needs --init-video",
        "strength 0": "--strength must be a number in (0, 1]",
        "missing init video": "nope.mp4' does not exist",
        "unreadable init video": "junk.mp4",
        "init video too short": "has 3 frames",
        "line strength without init": "request 2 (0001.mp4) has a strength but no init_video",
        "file strength without any init": "--strength needs --init-video or requests with init_video",
    }
    for case, message in expected.items():
        assert generate.main(cases[case]) == 2, case
        assert message in capsys.readouterr().err, case


def test_bad_input_subprocess_no_traceback(tmp_path):
    """The real entry point: exit code 2, one stderr line, no traceback; fast (torch is not imported)."""
    cases = _bad_inputs(tmp_path)
    for case in ("res abc", "frames 0", "missing ckpt", "unwritable out", "bad prompts line", "frames text",
                 "unreadable init video", "init video too short"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "generate.py"), *cases[case]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (case, proc.stderr)
        assert "Traceback" not in proc.stderr, case
        assert len(proc.stderr.strip().splitlines()) == 1, (case, proc.stderr)


def test_sampling_settings_take_the_checkpoint_recommendation_unless_given():
    meta = {"sampling": {"steps": 32, "cfg": 5.0, "cfg_interval": [0.1, 1.0]}}
    s = pipeline.sampling_settings(meta, steps=None, cfg=None, cfg_interval=None)
    assert (s.steps, s.cfg, s.cfg_interval, s.sampler) == (32, 5.0, (0.1, 1.0), "euler")
    assert pipeline.sampling_settings(meta, cfg_interval=(0.2, 0.9), steps=4).cfg_interval == (0.2, 0.9)
    s = pipeline.sampling_settings({})
    assert (s.steps, s.cfg, s.cfg_interval, s.skip_guidance, s.skip_blocks) == (30, 5.0, (0.0, 1.0), 0.0, ())
    s = pipeline.sampling_settings({"sampling": {"skip_guidance": 1.5, "skip_blocks": [3, 1]}})
    assert (s.skip_guidance, s.skip_blocks) == (1.5, (3, 1))
    for bad, match in (({"steps": 0}, "steps"), ({"cfg": 0.5}, "cfg"), ({"sampler": "ddim"}, "sampler"),
                       ({"cfg_interval": (0.8, 0.2)}, "cfg_interval"), ({"skip_guidance": -1.0}, "skip")):
        with pytest.raises(ValueError, match=match):
            pipeline.sampling_settings({}, **bad)


def test_extent_notes_name_requests_beyond_the_trained_latent():
    class Vae:
        temporal_stride, spatial_stride = 4, 8

    def req(frames, h, w):
        return VideoRequest("a red ball", frames, h, w, 0, "", Path(f"{frames}x{h}x{w}.mp4"))

    meta = {"trained_latent_max": [7, 20, 20]}
    inside, taller, longer = req(17, 128, 160), req(17, 256, 128), req(64, 128, 128)
    assert pipeline.extent_notes([inside], meta, Vae) == []
    assert pipeline.extent_notes([inside], {}, Vae) == []  # a checkpoint that does not say: no note
    notes = pipeline.extent_notes([inside, taller, longer], meta, Vae)
    assert len(notes) == 2
    assert "17x256x128.mp4" in notes[0] and "height 32 > 20" in notes[0] and "width" not in notes[0]
    assert "64x128x128.mp4" in notes[1] and "frames 17 > 7" in notes[1]


# ---- end to end on a tiny random checkpoint -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_ckpt")
    torch.manual_seed(0)
    vae_cfg = VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1), temporal_stride=4)
    vae_dir = save_vae(CausalVAE3D(vae_cfg), root / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2))
    meta = {"vae": str(vae_dir), "text_encoder": "default", "random_init": True, "flow": {"max_tokens": 4096}}
    return save_dit(dit, root / "dit", meta)


def test_generate_exact_size_and_frames(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "one.mp4"
    argv = ["--prompt", "dog running in snow", "--frames", "1", "--res", "200x360", "--steps", "2"]
    assert generate.main([*argv, "--ckpt", str(tiny_ckpt), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert str(out) in stdout and "RANDOM" in stdout
    assert read_mp4(out).shape == (1, 200, 360, 3)


def test_generate_vae_flag_decodes_with_the_named_vae(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """--vae swaps the decoder (same latent space); naming the checkpoint's own VAE changes nothing.

    Compared on what reaches the decoder (its weights and the sampled latent), not on the mp4s: H.264's
    encoding decisions can turn a one-unit rounding difference of two runs into a visible one (seen in CI)."""
    torch.manual_seed(1)
    vae_cfg = VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1), temporal_stride=4)
    other = save_vae(CausalVAE3D(vae_cfg), tmp_path / "other_vae")
    argv = ["--prompt", "a red ball", "--frames", "5", "--res", "32x32", "--steps", "2",
            "--ckpt", str(tiny_ckpt)]
    seen, real_decode = {}, pipeline.decode_batch_to_mp4

    def recording_decode(latents, requests, vae, fps, pngs=None):
        for latent, request in zip(latents, requests):
            seen[request.out.stem] = (latent.clone(), {k: v.clone() for k, v in vae.state_dict().items()})
        return real_decode(latents, requests, vae, fps, pngs)

    monkeypatch.setattr(pipeline, "decode_batch_to_mp4", recording_decode)
    for name, extra in {"own": [], "own_named": ["--vae", str(tiny_ckpt.parent / "vae")],
                        "other": ["--vae", str(other)]}.items():
        assert generate.main([*argv, *extra, "--out", str(tmp_path / f"{name}.mp4")]) == 0
    capsys.readouterr()
    mp4 = {name: read_mp4(tmp_path / f"{name}.mp4").astype(int) for name in seen}
    assert mp4["own"].shape == (5, 32, 32, 3)
    assert abs(mp4["own"] - mp4["other"]).mean() > 1  # a different decoder shows
    (own_z, own_w), (named_z, named_w), (other_z, other_w) = seen["own"], seen["own_named"], seen["other"]
    # the VAE does not enter sampling: the same latent in all three runs
    assert torch.allclose(own_z, named_z, atol=1e-4) and torch.allclose(own_z, other_z, atol=1e-4)
    assert own_w.keys() == named_w.keys() == other_w.keys()
    assert all(torch.equal(own_w[k], named_w[k]) for k in own_w)  # the checkpoint's own decoder
    assert not all(torch.equal(own_w[k], other_w[k]) for k in own_w)  # the named one
    other_vae = load_vae(str(other))
    assert all(torch.equal(other_w[k], v) for k, v in other_vae.state_dict().items())


def test_generate_prompts_file_packs_odd_shapes(tiny_ckpt, tmp_path, capsys, monkeypatch):
    lines = [
        {"prompt": "a dog", "frames": 64, "res": "32x48"},
        {"prompt": "a cat", "frames": 6, "res": "33x47", "negative_prompt": "blurry"},
        {"prompt": "the sea", "frames": 1},
    ]
    prompts = tmp_path / "req.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in lines))
    import videodit.sampling as sampling

    calls = []
    real = VideoDiT.forward_samples
    monkeypatch.setattr(
        VideoDiT, "forward_samples", lambda self, z, t, e: calls.append(len(z)) or real(self, z, t, e)
    )
    argv = ["--prompts-file", str(prompts), "--res", "24x40", "--steps", "2", "--sampler", "heun"]
    assert generate.main([*argv, "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "o")]) == 0
    assert calls == [6, 6, 6]  # 3 requests x (cond + uncond) packed into each of heun's 3 calls
    assert sampling.SAMPLERS == generate.SAMPLERS
    shapes = [read_mp4(tmp_path / "o" / f"{i:04d}.mp4").shape for i in range(3)]
    assert shapes == [(64, 32, 48, 3), (6, 33, 47, 3), (1, 24, 40, 3)]
    assert capsys.readouterr().out.count("wrote ") == 3


# ---- video-to-video ---------------------------------------------------------------------------------------
def test_videos_of_one_shape_decode_as_one_batch_like_one_by_one(tmp_path):
    """decode_batch_to_mp4 writes what decode_to_mp4 writes for each video; decode_groups batches equal
    shapes only, up to DECODE_BATCH_PIXELS a frame (one at a time for a VAE that does not stream), and a
    batch of mixed shapes is refused."""
    torch.manual_seed(3)
    vae = CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))).eval()
    latents = [torch.randn(4, 3, 4, 6) for _ in range(3)]
    batch = [VideoRequest("a", 9, 28, 44, i, "", tmp_path / f"b{i}.mp4") for i in range(3)]
    alone = [VideoRequest("a", 9, 28, 44, i, "", tmp_path / f"a{i}.mp4") for i in range(3)]
    assert pipeline.decode_batch_to_mp4(latents, batch, vae, 8.0) == [9, 9, 9]
    for z, r in zip(latents, alone):
        pipeline.decode_to_mp4(z, r, vae, 8.0)
    for a, b in zip(alone, batch):
        assert np.abs(read_mp4(a.out).astype(int) - read_mp4(b.out).astype(int)).mean() < 0.5
    small = VideoRequest("a", 9, 128, 128, 0, "", tmp_path / "s.mp4")
    big = VideoRequest("a", 9, 512, 512, 0, "", tmp_path / "l.mp4")
    zs, zb = torch.zeros(4, 3, 16, 16), torch.zeros(4, 3, 64, 64)
    groups = pipeline.decode_groups([zs] * 20 + [zb] * 2 + [zs[:, :2]], [small] * 20 + [big] * 2 + [small],
                                    vae)
    assert groups == [list(range(16)), list(range(16, 20)), [20], [21], [22]]
    assert pipeline.decode_groups([zs] * 3, [small] * 3, object()) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="one shape"):
        pipeline.decode_batch_to_mp4([zs, zs[:, :2]], [small, small], vae, 8.0)


def test_init_pixels_cover_crop_and_pad():
    """Frames are scaled to cover the latent's pixel size, centre-cropped, and the last frame repeated up
    to the VAE's whole temporal steps."""
    ramp = np.tile(np.linspace(0, 255, 40).round().astype(np.uint8)[None, :, None], (20, 1, 3))  # (20, 40, 3)
    frames = np.stack([ramp, 255 - ramp])
    out = pipeline.init_pixels(frames, (2, 2, 2), 4, 8)  # latent (T 2, h 2, w 2): 5 frames of 16x16
    assert out.shape == (3, 5, 16, 16) and out.dtype == torch.float32
    row = out[0, 0, 8]  # scaled by 0.8 to 16x32, the middle 16 columns kept: rising, centred on grey
    assert (row[1:] > row[:-1]).all() and abs(float(row.mean())) < 0.05
    assert float(row[0]) > -0.6 and float(row[-1]) < 0.6  # not the ramp's ends: those were cropped away
    assert torch.allclose(out[:, 1], -out[:, 0], atol=0.02)  # the second frame, inverted
    assert all(torch.equal(out[:, k], out[:, 1]) for k in (2, 3, 4))
    exact = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    same = pipeline.init_pixels(exact, (2, 2, 3), 4, 8)  # already the right size: values only rescaled
    torch.testing.assert_close(same, torch.from_numpy(exact).permute(3, 0, 1, 2).float() / 127.5 - 1)


def test_read_init_frames_repeats_an_image(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "still.png")
    frames = first_frames(tmp_path / "still.png", 4)
    assert frames.shape == (4, 12, 20, 3) and all((f == pixels).all() for f in frames)


def test_generate_init_video_starts_from_its_latent(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """--init-video: the sampler gets the VAE's encoding of the first --frames frames (scaled to cover
    --res, centre-cropped) and --strength; a low strength stays near that latent, plain text-to-video not."""
    import videodit.sampling as sampling
    from vae3d.io import load_vae

    clip = tmp_path / "in.mp4"
    write_mp4(clip, np.random.default_rng(0).integers(0, 256, (9, 24, 40, 3), dtype=np.uint8), fps=8)
    seen = []
    real = sampling.sample

    def spy(model, reqs, **kw):
        out = real(model, reqs, **kw)
        seen.append((reqs, out))
        return out

    monkeypatch.setattr(pipeline, "sample", spy)
    argv = ["--prompt", "a red ball", "--frames", "5", "--res", "16x32", "--steps", "8",
            "--ckpt", str(tiny_ckpt)]
    v2v_out, t2v_out = tmp_path / "v2v.mp4", tmp_path / "t2v.mp4"
    assert generate.main([*argv, "--init-video", str(clip), "--strength", "0.25", "--out", str(v2v_out)]) == 0
    assert generate.main([*argv, "--out", str(t2v_out)]) == 0
    capsys.readouterr()
    (v2v,), (v2v_latent,) = seen[0]
    (t2v,), (t2v_latent,) = seen[1]
    assert t2v.init is None and t2v.strength == 1.0 and v2v.strength == 0.25
    vae = load_vae(str(tiny_ckpt.parent / "vae"))
    pixels = pipeline.init_pixels(read_mp4(clip)[:5], v2v.size, vae.temporal_stride, vae.spatial_stride)
    with torch.no_grad():
        expected = vae.encode(pixels[None])[0]
    torch.testing.assert_close(v2v.init, expected, atol=1e-4, rtol=1e-4)
    near, far = (v2v_latent - v2v.init).norm(), (t2v_latent - v2v.init).norm()
    assert near < 0.5 * far, (near, far)
    assert read_mp4(v2v_out).shape == (5, 16, 32, 3)


@pytest.fixture(scope="module")
def tiny_causal_ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint with a causal 2x1x1 tubelet, trained (its meta says) for i2v only."""
    root = tmp_path_factory.mktemp("tiny_causal")
    torch.manual_seed(0)
    vae_cfg = VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1), temporal_stride=4)
    vae_dir = save_vae(CausalVAE3D(vae_cfg), root / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2,
                             patch=(2, 1, 1), causal_tubelet=True))
    meta = {"vae": str(vae_dir), "text_encoder": "default", "flow": {"max_tokens": 4096},
            "tasks": ["i2v", "t2v"]}
    return save_dit(dit, root / "dit", meta)


def test_image_and_extend_keep_the_given_frames(tiny_causal_ckpt, tmp_path, capsys, monkeypatch):
    """--image: the sampler gets the VAE's 1-frame latent of the image as its prefix; --extend: the clip at
    --fps, cut to whole tokens (latent frames 0, 1-2: 9 frames of 12), and the output latent keeps it. A
    task the checkpoint was not trained for warns."""
    import videodit.sampling as sampling

    rng = np.random.default_rng(0)
    image, clip = tmp_path / "first.png", tmp_path / "clip.mp4"
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(image)
    write_mp4(clip, rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), fps=8)
    seen = []
    real = sampling.sample

    def spy(model, reqs, **kw):
        out = real(model, reqs, **kw)
        seen.append((reqs, out))
        return out

    monkeypatch.setattr(pipeline, "sample", spy)
    common = ["--prompt", "a red ball", "--steps", "3", "--ckpt", str(tiny_causal_ckpt), "--fps", "8"]
    assert generate.main([*common, "--image", str(image), "--frames", "9", "--res", "16x32",
                          "--out", str(tmp_path / "i2v.mp4")]) == 0
    assert generate.main([*common, "--extend", str(clip), "--frames", "17", "--res", "16x16",
                          "--out", str(tmp_path / "ext.mp4")]) == 0
    out = capsys.readouterr().out
    assert "not trained for extend" in out and "not trained for i2v" not in out
    (i2v,), (i2v_latent,) = seen[0]
    (ext,), (ext_latent,) = seen[1]
    vae = load_vae(str(tiny_causal_ckpt.parent / "vae"))
    with torch.no_grad():
        ts, ss = vae.temporal_stride, vae.spatial_stride
        first = pipeline.init_pixels(np.asarray(Image.open(image))[None], (1, *i2v.size[1:]), ts, ss)
        torch.testing.assert_close(i2v.prefix, vae.encode(first[None])[0], atol=1e-4, rtol=1e-4)
        kept = pipeline.init_pixels(read_mp4(clip)[:9], (3, *ext.size[1:]), ts, ss)
        torch.testing.assert_close(ext.prefix, vae.encode(kept[None])[0], atol=1e-4, rtol=1e-4)
    assert ext.prefix.shape[1] == 3 and torch.equal(ext_latent[:, :3], ext.prefix)
    assert torch.equal(i2v_latent[:, :1], i2v.prefix)
    assert read_mp4(tmp_path / "ext.mp4").shape == (17, 16, 16, 3)


def test_first_and_last_image_give_the_prefix_and_the_last_frame_latent(tiny_causal_ckpt, tmp_path, capsys,
                                                                         monkeypatch):
    """--image with --last-image: the sampler gets the first image's latent as its prefix and the last
    image encoded alone (scaled to cover, centre-cropped) as its last frame; the video has exactly --frames
    frames; an untrained task warns; a frame count whose latent does not end on a token group is refused
    with the counts that work."""
    from PIL import Image

    import videodit.sampling as sampling

    rng = np.random.default_rng(1)
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(first)
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(last)
    seen = []
    real = sampling.sample
    monkeypatch.setattr(pipeline, "sample",
                        lambda model, reqs, **kw: seen.append(reqs) or real(model, reqs, **kw))
    common = ["--prompt", "a red ball", "--steps", "3", "--ckpt", str(tiny_causal_ckpt), "--res", "16x32",
              "--image", str(first), "--last-image", str(last)]
    assert generate.main([*common, "--frames", "9", "--out", str(tmp_path / "fl.mp4")]) == 0
    assert "not trained for first_last" in capsys.readouterr().out
    (req,) = seen[0]
    vae = load_vae(str(tiny_causal_ckpt.parent / "vae"))
    with torch.no_grad():
        pixels = pipeline.init_pixels(np.asarray(Image.open(last))[None], (1, *req.size[1:]),
                                      vae.temporal_stride, vae.spatial_stride)
        torch.testing.assert_close(req.last, vae.encode(pixels[None])[0], atol=1e-4, rtol=1e-4)
    assert req.prefix.shape[1] == 1 and read_mp4(tmp_path / "fl.mp4").shape == (9, 16, 32, 3)
    assert generate.main([*common, "--frames", "13", "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "ask for --frames 9 or 17" in err and not (tmp_path / "x.mp4").exists()


def test_a_checkpoint_whose_tubelet_mixes_frame_zero_refuses_an_image(tiny_ckpt, tmp_path, capsys):
    tiny = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny)
    patched = tmp_path / "p2"
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    save_dit(VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2,
                                patch=(2, 2, 2))), patched, cfg["meta"])
    rc = generate.main(["--prompt", "a", "--image", str(tiny), "--frames", "9", "--res", "16x16",
                        "--steps", "2", "--ckpt", str(patched), "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "needs model.causal_tubelet" in capsys.readouterr().err
