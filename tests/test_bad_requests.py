"""generate.py against a hostile user: every bad request is one line on stderr, exit status 2, no
traceback, and refused before any model weights are read (the checkpoint's config.json and the safetensors
headers may be read; the weights may not)."""

import json
import pickle
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate
import vae3d.io
import videodit.checkpoint
import videodit.pipeline as pipeline
from vae3d.config import VAEConfig
from vae3d.io import save_vae
from vae3d.model import CausalVAE3D
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import write_mp4

REPO = Path(__file__).resolve().parents[1]


def _ckpt(folder: Path, vae: Path, **dit) -> Path:
    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(**{"in_channels": 4, "text_dim": 384, "hidden_size": 24, "depth": 1,
                                  "num_heads": 2, **dit}))
    return save_dit(model, folder, {"vae": str(vae), "text_encoder": "default", "flow": {"max_tokens": 4096}})


def _edit_config(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny checkpoint and every kind of broken file and folder a user can hand generate.py."""
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    vae = save_vae(CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))),
                   root / "vae")
    ckpt = _ckpt(root / "ckpt", vae)
    w = {"root": root, "ckpt": ckpt, "vae": vae, "marker": root / "pwned"}

    def broken_ckpt(name, weights: bytes):
        folder = _edit_config(ckpt, root / name, lambda c: None)
        (folder / "model.safetensors").write_bytes(weights)
        return folder

    good = (ckpt / "model.safetensors").read_bytes()
    w["ckpt_garbage"] = broken_ckpt("ckpt_garbage", b"\x93NUMPY garbage " * 100)
    w["ckpt_truncated"] = broken_ckpt("ckpt_truncated", good[: len(good) // 2])
    w["ckpt_empty"] = broken_ckpt("ckpt_empty", b"")
    w["ckpt_pickle"] = broken_ckpt("ckpt_pickle", pickle.dumps(Payload(w["marker"])))
    w["ckpt_shapes"] = _edit_config(ckpt, root / "ckpt_shapes", lambda c: c["dit"].update(hidden_size=32))
    w["ckpt_wide"] = _edit_config(ckpt, root / "ckpt_wide",
                                  lambda c: c["dit"].update(hidden_size=65536, num_heads=512))
    w["ckpt_key"] = _edit_config(ckpt, root / "ckpt_key", lambda c: c["dit"].update(colour="red"))
    w["ckpt_arch"] = _edit_config(ckpt, root / "ckpt_arch", lambda c: c["dit"].update(prediction="epsilon"))
    w["ckpt_json"] = broken_ckpt("ckpt_json", good)
    (w["ckpt_json"] / "config.json").write_bytes(b"{not json")
    wide_vae = save_vae(CausalVAE3D(VAEConfig(latent_channels=8, base_channels=8, channel_mult=(1, 1, 1))),
                        root / "vae8")
    w["vae_channels"] = wide_vae
    w["vae_noweights"] = _edit_config(vae, root / "vae_noweights", lambda c: None)
    (w["vae_noweights"] / "model.safetensors").unlink()
    w["vae_key"] = _edit_config(vae, root / "vae_key", lambda c: c["config"].update(colour="red"))
    w["vae_garbage"] = _edit_config(vae, root / "vae_garbage", lambda c: None)
    (w["vae_garbage"] / "model.safetensors").write_bytes(b"garbage" * 50)
    w["vae_class"] = _edit_config(vae, root / "vae_class", lambda c: c.update(_class_name="MyVAE"))
    w["vae_json"] = _edit_config(vae, root / "vae_json", lambda c: None)
    (w["vae_json"] / "config.json").write_text("[1, 2")
    diffusers_bad = root / "vae_diffusers_bad"
    diffusers_bad.mkdir()
    (diffusers_bad / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan",
                                                           "z_dim": "sixteen", "dim_mult": 3}))
    (diffusers_bad / "diffusion_pytorch_model.safetensors").write_bytes(good)
    w["vae_diffusers_bad"] = diffusers_bad
    diffusers_bin = root / "vae_diffusers_bin"
    diffusers_bin.mkdir()
    (diffusers_bin / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    (diffusers_bin / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload(w["marker"])))
    w["vae_diffusers_bin"] = diffusers_bin
    short = root / "short.mp4"
    write_mp4(short, np.zeros((3, 16, 16, 3), np.uint8), fps=8)
    w["short"] = short
    Image.new("RGB", (6000, 6000), (200, 30, 30)).save(root / "huge.png")
    w["huge"] = root / "huge.png"
    files = {
        "bytes.jsonl": '{"prompt": "caf\xe9"}\n'.encode("latin-1"),
        "surrogate.jsonl": b'{"prompt": "a \\udcff b"}\n',
        "frames_overflow.jsonl": b'{"prompt": "a", "frames": 1000000000000000000000000000000}\n',
        "seed_overflow.jsonl": b'{"prompt": "a", "seed": 1000000000000000000000000000000}\n',
        "frames_huge.jsonl": b'{"prompt": "a"}\n{"prompt": "b", "frames": 100000}\n',
        "last_alone.jsonl": b'{"prompt": "a", "last_image": "%s"}\n' % str(root / "huge.png").encode(),
        "empty.jsonl": b"\n\n",
        "ok.jsonl": b'{"prompt": "a"}\n{"prompt": "b"}\n',
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "taken").mkdir()
    (root / "taken" / "0001.json").write_text("{}")
    (root / "exists.mp4").write_bytes(b"an earlier video")
    return w


def cases(w) -> dict[str, tuple[list[str], str]]:
    """case -> (argv, a piece of the one-line message)."""
    root = w["root"]
    tiny = ["--ckpt", str(w["ckpt"])]
    out = ["--out", str(root / "out.mp4")]
    a = ["--prompt", "a", *tiny, *out]
    return {
        "no prompt": ([], "give --prompt"),
        "prompt and prompts file": (["--prompt", "a", "--prompts-file", str(root / "ok.jsonl")],
                                    "not allowed"),
        "unknown flag": ([*a, "--width", "3"], "unrecognized"),
        "frames text": ([*a, "--frames", "ten"], "invalid int"),
        "frames 0": ([*a, "--frames", "0"], "--frames must be a positive integer"),
        "frames -4": ([*a, "--frames", "-4"], "--frames must be a positive integer"),
        "frames integer overflow": ([*a, "--frames", "9" * 30], "--frames must be in [1, 1048576]"),
        "frames 100000": ([*a, "--frames", "100000"], "needs about"),
        "res abc": ([*a, "--res", "abc"], "HEIGHTxWIDTH"),
        "res 0x128": ([*a, "--res", "0x128"], "must be in [1, 8192]"),
        "res 9000x16": ([*a, "--res", "9000x16"], "must be in [1, 8192]"),
        "res 8192x8192": ([*a, "--res", "8192x8192"], "needs about"),
        "fps 1e12": ([*a, "--fps", "1e12"], "--fps must be a number in [0.01, 1000]"),
        "fps 1e-300": ([*a, "--fps", "1e-300"], "--fps must be a number in [0.01, 1000]"),
        "fps nan": ([*a, "--fps", "nan"], "--fps must be"),
        "fps -2": ([*a, "--fps", "-2"], "--fps must be"),
        "steps -1": ([*a, "--steps", "-1"], "--steps"),
        "seed -1": ([*a, "--seed", "-1"], "--seed"),
        "seed 2**63": ([*a, "--seed", str(2**63)], "--seed"),
        "cfg 0": ([*a, "--cfg", "0"], "--cfg"),
        "cfg nan": ([*a, "--cfg", "nan"], "--cfg"),
        "cfg interval reversed": ([*a, "--cfg-interval", "0.8,0.2"], "--cfg-interval"),
        "skip guidance -1": ([*a, "--skip-guidance", "-1"], "--skip-guidance"),
        "skip blocks text": ([*a, "--skip-blocks", "two"], "--skip-blocks"),
        "sampler": ([*a, "--sampler", "ddim"], "invalid choice"),
        "device": ([*a, "--device", "tpu"], "--device"),
        "max memory -1": ([*a, "--max-memory-gb", "-1"], "--max-memory-gb"),
        "max memory too small": ([*a, "--max-memory-gb", "0.3"], "more than the 0.3 GiB available"),
        "non-UTF-8 prompt": (["--prompt", "caf\udce9", *tiny, *out], "--prompt is not valid UTF-8"),
        "non-UTF-8 negative prompt": ([*a, "--negative-prompt", "\udcff"], "--negative-prompt is not valid"),
        "prompts file not UTF-8": (["--prompts-file", str(root / "bytes.jsonl"), *tiny], "cannot read"),
        "prompts file lone surrogate": (["--prompts-file", str(root / "surrogate.jsonl"), *tiny,
                                         "--out", str(root / "o1")], "not valid UTF-8"),
        "prompts file frames overflow": (["--prompts-file", str(root / "frames_overflow.jsonl"), *tiny,
                                          "--out", str(root / "o2")], "frames must be in [1, 1048576]"),
        "prompts file seed overflow": (["--prompts-file", str(root / "seed_overflow.jsonl"), *tiny,
                                        "--out", str(root / "o3")], "seed must be an integer in [0, 2**63)"),
        "prompts file frames 100000": (["--prompts-file", str(root / "frames_huge.jsonl"), *tiny,
                                        "--out", str(root / "o4")], "0001.mp4 (100000 frames"),
        "prompts file empty": (["--prompts-file", str(root / "empty.jsonl"), *tiny], "has no requests"),
        "prompts file missing": (["--prompts-file", str(root / "nope.jsonl")], "does not exist"),
        "prompts file into a folder holding a target": (
            ["--prompts-file", str(root / "ok.jsonl"), *tiny, "--out", str(root / "taken")],
            "0001.json' already exist"),
        "out exists": (["--prompt", "a", *tiny, "--out", str(root / "exists.mp4")], "--overwrite"),
        "out not mp4": (["--prompt", "a", *tiny, "--out", str(root / "x.avi")], "must be an .mp4"),
        "out unwritable": (["--prompt", "a", *tiny, "--out", str(root / "exists.mp4" / "x.mp4")],
                           "not a directory"),
        "missing ckpt": (["--prompt", "a", "--ckpt", str(root / "nope"), *out], "does not exist"),
        "ckpt garbage weights": (["--prompt", "a", "--ckpt", str(w["ckpt_garbage"]), *out],
                                 "not a complete safetensors file"),
        "ckpt truncated weights": (["--prompt", "a", "--ckpt", str(w["ckpt_truncated"]), *out],
                                   "truncated"),
        "ckpt empty weights": (["--prompt", "a", "--ckpt", str(w["ckpt_empty"]), *out], "(0 bytes)"),
        "ckpt pickled weights": (["--prompt", "a", "--ckpt", str(w["ckpt_pickle"]), *out],
                                 "not a complete safetensors file"),
        "ckpt shape mismatch": (["--prompt", "a", "--ckpt", str(w["ckpt_shapes"]), *out],
                                "does not match its config"),
        "ckpt 65536 wide": (["--prompt", "a", "--ckpt", str(w["ckpt_wide"]), *out], "does not match"),
        "ckpt unknown config key": (["--prompt", "a", "--ckpt", str(w["ckpt_key"]), *out], "colour"),
        "ckpt unsupported architecture": (["--prompt", "a", "--ckpt", str(w["ckpt_arch"]), *out], "epsilon"),
        "ckpt config not JSON": (["--prompt", "a", "--ckpt", str(w["ckpt_json"]), *out], "not readable JSON"),
        "vae missing": ([*a, "--vae", str(root / "nope")], "not 'default' or a VAE folder"),
        "vae without weights": ([*a, "--vae", str(w["vae_noweights"])], "does not exist"),
        "vae extra config key": ([*a, "--vae", str(w["vae_key"])], "colour"),
        "vae garbage weights": ([*a, "--vae", str(w["vae_garbage"])], "not a complete safetensors file"),
        "vae unsupported class": ([*a, "--vae", str(w["vae_class"])], "unsupported VAE class 'MyVAE'"),
        "vae config not JSON": ([*a, "--vae", str(w["vae_json"])], "not readable JSON"),
        "vae bad diffusers folder": ([*a, "--vae", str(w["vae_diffusers_bad"])], "AutoencoderKLWan"),
        "vae pickled diffusers weights": ([*a, "--vae", str(w["vae_diffusers_bin"])],
                                          "pickled weights ['diffusion_pytorch_model.bin'] are never loaded"),
        "vae latent space mismatch": ([*a, "--vae", str(w["vae_channels"])], "8 latent channels"),
        "init video missing": ([*a, "--init-video", str(root / "nope.mp4")], "does not exist"),
        "init video too short": ([*a, "--init-video", str(w["short"]), "--frames", "9"], "has 3 frames"),
        "strength without init": ([*a, "--strength", "0.5"], "--strength needs --init-video"),
        "last image without a first": ([*a, "--last-image", str(w["short"]), "--frames", "9"],
                                       "--last-image gives the last frame together with the first"),
        "last image with one frame": ([*a, "--image", str(w["short"]), "--last-image", str(w["short"]),
                                       "--frames", "1"], "ask for --frames > 1"),
        "last image missing": ([*a, "--image", str(w["short"]), "--last-image", str(root / "nope.png"),
                                "--frames", "9"], "does not exist"),
        "last image unreadable": ([*a, "--image", str(w["short"]), "--last-image", str(root / "bytes.jsonl"),
                                   "--frames", "9"], "bytes.jsonl"),
        "prompts file last image without image": (["--prompts-file", str(root / "last_alone.jsonl"), *tiny,
                                                   "--out", str(root / "o5")], "give image as well"),
        "huge init image at a huge size": ([*a, "--init-video", str(w["huge"]), "--frames", "300", "--res",
                                            "4096x4096"], "needs about"),
    }


@pytest.fixture
def no_weights_read(monkeypatch):
    """Fail the test if a model is loaded or any weights file is read."""
    def refuse(*args, **kwargs):
        pytest.fail(f"weights were read for a bad request: {args[:1]}")

    monkeypatch.setattr(pipeline, "load_pipeline", refuse)
    monkeypatch.setattr(videodit.checkpoint, "load_file", refuse)
    monkeypatch.setattr(vae3d.io, "load_file", refuse)


CASES = list(cases(defaultdict(lambda: Path("unused"))))  # the case names (paths come from `world`)


def test_the_table_has_at_least_40_requests():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES)
def test_a_bad_request_is_one_line_status_2_before_any_weights_are_read(world, capsys, no_weights_read, case):
    argv, message = cases(world)[case]
    assert generate.main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("generate.py: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not world["marker"].exists()  # no crafted pickle ran
    assert not (world["root"] / "out.mp4").exists()


def test_the_entry_point_refuses_in_one_line_without_a_traceback(world):
    """The real command line, including a prompt in a legacy 8-bit encoding (bytes that are not UTF-8)."""
    table = cases(world)
    argv = {name: table[name][0] for name in ("ckpt garbage weights", "fps 1e12")}
    argv["latin-1 prompt"] = [b"--prompt", "café".encode("latin-1"), "--ckpt", str(world["ckpt"])]
    for case, args in argv.items():
        proc = subprocess.run([sys.executable, str(REPO / "generate.py"), *args], capture_output=True,
                              timeout=120)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 2 and "Traceback" not in err, (case, err)
        assert len(err.strip().splitlines()) == 1, (case, err)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(world, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke\nacross lines")

    monkeypatch.setattr(pipeline, "load_pipeline", broken)
    argv = ["--prompt", "a", "--ckpt", str(world["ckpt"]), "--frames", "1", "--res", "16x16",
            "--out", str(tmp_path / "x.mp4")]
    assert generate.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["generate.py: internal error: RuntimeError: something inside broke "
                                        "across lines (run again with --debug for the traceback)"]
    assert generate.main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "something inside broke" in err


def test_a_text_encoder_with_crafted_pickled_weights_is_refused_and_never_runs(world, tmp_path, capsys):
    """Text encoders may ship pickled .bin weights (transformers reads them with weights_only=True): a
    crafted one is a one-line refusal, and its payload does not run."""
    import shutil

    from videodit.text_encoder import default_text_encoder_path

    text = tmp_path / "text_encoder"
    shutil.copytree(default_text_encoder_path(), text)
    (text / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": Payload(marker)}, text / "pytorch_model.bin")
    ckpt = _edit_config(world["ckpt"].resolve(), tmp_path / "ckpt",
                        lambda c: c["meta"].update(text_encoder=str(text)))
    argv = ["--prompt", "a", "--ckpt", str(ckpt), "--frames", "1", "--res", "16x16",
            "--out", str(tmp_path / "x.mp4")]
    assert generate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load the text encoder in" in err[0], err
    assert not marker.exists()

