import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_dit_ckpt(tmp_path):
    """A random tiny DiT (+ its tiny VAE) saved as a checkpoint folder whose meta asks for 2 steps, CFG 2:
    enough for the benchmarks' plumbing, not for pictures."""
    from vae3d.config import VAEConfig
    from vae3d.io import save_vae
    from vae3d.model import CausalVAE3D
    from videodit.checkpoint import save_dit
    from videodit.model import DiTConfig, VideoDiT

    torch.manual_seed(0)
    vae_dir = save_vae(CausalVAE3D(VAEConfig(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1))),
                       tmp_path / "tiny_vae")
    dit = VideoDiT(DiTConfig(in_channels=4, text_dim=384, hidden_size=24, depth=1, num_heads=2))
    meta = {"vae": str(vae_dir), "text_encoder": "default", "flow": {"max_tokens": 4096},
            "sampling": {"steps": 2, "cfg": 2.0}}
    return save_dit(dit, tmp_path / "tiny_dit", meta)
