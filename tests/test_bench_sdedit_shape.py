"""bench.sdedit_shape on a tiny checkpoint: one record per strength, counts per prompted shape."""

import torch

from bench import sdedit_shape
from vae3d.config import VAEConfig
from vae3d.io import save_vae
from vae3d.model import CausalVAE3D
from videodit.checkpoint import save_dit
from videodit.model import DiTConfig, VideoDiT


def test_runs_on_a_tiny_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    vae_dir = save_vae(CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))),
                       tmp_path / "vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2))
    meta = {"vae": str(vae_dir), "text_encoder": "default", "flow": {"max_tokens": 4096}}
    ckpt = save_dit(dit, tmp_path / "dit", meta)
    argv = ["--dit", str(ckpt), "--num", "4", "--strengths", "0.5", "1.0", "--steps", "2"]
    records = sdedit_shape.main(argv)
    assert [r["strength"] for r in records] == [0.5, 1.0]
    for r in records:
        assert r["clips"] == 4 and 0 <= r["all_shape"] <= 100
        assert sum(int(v.split("/")[1]) for v in r["shape_right"].values()) == 4
    assert torch.is_grad_enabled()
    assert capsys.readouterr().out.count('"bench": "sdedit_shape"') == 2
