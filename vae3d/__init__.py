"""vae3d: a causal 3D video VAE (streamed in time, tiled in space) plus adapters for diffusers video VAEs."""

from .adapters import DiffusersVAEAdapter
from .config import VAEConfig
from .io import load_vae, save_vae
from .layers import CausalConv3d
from .model import CausalVAE3D

__all__ = ["VAEConfig", "CausalConv3d", "CausalVAE3D", "DiffusersVAEAdapter", "load_vae", "save_vae"]
