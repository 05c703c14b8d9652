"""data.dit_pairs: a DiT's SDEdit latents paired with their clips; sharded, resumable, checked."""

import json

import pytest
import torch

from data.dit_pairs import build_pairs, load_pairs
from data.synthetic import render_dataset
from vae3d import CausalVAE3D, VAEConfig
from vae3d.io import save_vae
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT
from videodit.mp4 import write_mp4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    torch.manual_seed(0)
    vae_dir = save_vae(CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))),
                       root / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2))
    with torch.no_grad():  # a fresh DiT predicts 0; give it an output so its latents depend on it
        dit.final_layer.linear.weight.normal_(0, 0.1)
    meta = {"vae": str(vae_dir), "text_encoder": "default", "flow": {"max_tokens": 4096},
            "sampling": {"steps": 4, "cfg": 2.0, "sampler": "euler"}}
    dit_dir = save_dit(dit, root / "dit", meta)
    render_dataset(root / "world", 2, seed=0, num_heldout=1, min_size=32, max_size=48, min_frames=9,
                   max_frames=9)
    odd = (torch.rand(9, 36, 44, 3) * 255).to(torch.uint8).numpy()  # not a multiple of the VAE's stride
    write_mp4(root / "odd.mp4", odd, fps=8)
    rows = (root / "world" / "train.jsonl").read_text().splitlines()
    rows = [json.dumps(json.loads(r) | {"path": str(root / "world" / json.loads(r)["path"])}) for r in rows]
    rows.append(json.dumps({"path": str(root / "odd.mp4"), "caption": "noise"}))
    (root / "train.jsonl").write_text("\n".join(rows) + "\n")
    return root, dit_dir, vae_dir


def test_pairs_are_sharded_cropped_and_resumable(setup, tmp_path):
    root, dit_dir, vae_dir = setup
    out = tmp_path / "pairs"
    index = build_pairs(root / "train.jsonl", out, num=3, dit=str(dit_dir), vae=str(vae_dir),
                        strength=(0.3, 0.6), max_frames=5, shard_size=2, batch=2)
    assert index["pairs"] == 3 and index["skipped"] == 0
    assert sorted(p.name for p in out.glob("pairs-*.pt")) == ["pairs-00000.pt", "pairs-00001.pt"]
    pairs = load_pairs(out)
    assert len(pairs) == 3
    for item in pairs:
        f, h, w, c = item["frames"].shape
        assert item["frames"].dtype == torch.uint8 and f == 5 and c == 3 and h % 8 == 0 and w % 8 == 0
        assert item["latent"].dtype == torch.float16 and tuple(item["latent"].shape) == (4, 2, h // 8, w // 8)
        assert 0.3 <= item["strength"] <= 0.6 and item["caption"]
    assert sorted(tuple(p["frames"].shape[1:3]) for p in pairs)[0] == (32, 40)  # 36x44 centre-cropped
    assert len({item["strength"] for item in pairs}) == 3  # drawn per clip
    before = (out / "pairs-00000.pt").stat().st_mtime_ns
    again = build_pairs(root / "train.jsonl", out, num=3, dit=str(dit_dir), vae=str(vae_dir),
                        strength=(0.3, 0.6), max_frames=5, shard_size=2, batch=2)
    assert again["pairs"] == 3 and (out / "pairs-00000.pt").stat().st_mtime_ns == before  # not redone
    assert json.loads((out / "index.json").read_text())["pairs"] == 3


def test_unreadable_clips_are_counted_and_bad_settings_refused(setup, tmp_path):
    root, dit_dir, vae_dir = setup
    rows = (root / "train.jsonl").read_text().splitlines()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = json.loads(rows[0]) | {"path": str(broken)}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([json.dumps(bad), *rows[1:]]) + "\n")
    index = build_pairs(manifest, tmp_path / "p", num=len(rows), dit=str(dit_dir), vae=str(vae_dir),
                        max_frames=5, shard_size=10)
    assert index["skipped"] == 1 and index["pairs"] == len(rows) - 1
    with pytest.raises(ValueError, match="strength"):
        build_pairs(manifest, tmp_path / "q", num=1, dit=str(dit_dir), vae=str(vae_dir), strength=(0.7, 0.2))
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="could be read"):
        build_pairs(only_bad, tmp_path / "r", num=1, dit=str(dit_dir), vae=str(vae_dir))
    with pytest.raises(ValueError, match="no pairs-"):
        load_pairs(tmp_path / "empty")
