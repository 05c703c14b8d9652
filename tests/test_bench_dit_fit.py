"""bench.dit_fit: select balanced clips, cache them at one size, fine-tune, score vae / init / fitted."""

import json

import pytest

from bench import dit_fit
from data import synthetic


@pytest.fixture
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_world")
    synthetic.main(["--out", str(root), "--num", "9", "--num-heldout", "0", "--seed", "4", "--min-size", "32",
                    "--max-size", "32", "--min-frames", "5", "--max-frames", "5"])
    return root / "train.jsonl"


def test_select_clips_round_robin_over_shapes(world):
    chosen = dit_fit.select_clips(world, 3, 32, 32, 5)
    assert sorted(r["shape"] for r in chosen) == ["circle", "square", "triangle"]
    assert all(r["path"].startswith("/") for r in chosen)
    with pytest.raises(SystemExit, match="only 0 clips of 64x64"):
        dit_fit.select_clips(world, 3, 64, 64, 5)


def test_fits_a_tiny_dit_and_reports_three_sources(world, tiny_dit_ckpt, tmp_path, monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # one in-process rank
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    out = tmp_path / "fit"
    argv = ["--manifest", str(world), "--out", str(out), "--init", str(tiny_dit_ckpt), "--num", "3",
            "--steps", "2", "--res", "32", "32", "--frames", "5", "--cfg", "1", "--sample-steps", "2"]
    lines = dit_fit.main(argv)
    assert [(x["source"], x.get("cfg")) for x in lines] == [("vae", None), ("init", 1.0), ("fitted", 1.0)]
    assert all(x["clips"] == 3 for x in lines)
    assert lines[-1]["steps"] == 2 and (out / "run" / "ema" / "config.json").is_file()
    index = json.loads((out / "cache" / "index.json").read_text())
    assert [s["latent_shape"][1:] for s in index["samples"]] == [[2, 4, 4]] * 3  # 5 frames of 32x32, native
    metrics = (out / "run" / "metrics.jsonl").read_text()
    again = dit_fit.main(argv)  # cache and finished run reused: no new training step
    assert (out / "run" / "metrics.jsonl").read_text() == metrics
    assert [(x["source"], x["clips"]) for x in again] == [(x["source"], x["clips"]) for x in lines]
    with pytest.raises(SystemExit, match="holds other clips"):  # same --out, another selection
        dit_fit.main([*argv[:7], "2", *argv[8:]])
