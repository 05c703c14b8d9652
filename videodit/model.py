"""VideoDiT: a text-conditioned diffusion transformer over NaViT-packed spacetime patches.

One forward runs on a `PackedBatch`: all samples' tokens back to back in one `(N, D_in)` sequence.
- Conditioning is per sample and gathered per token: c_i = timestep_embedding(t_i) + mean of sample i's
  projected text tokens; each block's adaLN-zero shift/scale/gate are computed from c `(S, D)` and indexed
  by `sample_id`, so samples at different timesteps share one sequence.
- Self-attention (RMS QK-norm, 3D RoPE) stays inside a sample; cross-attention goes from a sample's video
  tokens to that sample's text tokens only. A sample with no text (dropped for CFG) attends to a learned
  null text token.
- DiTConfig's architecture options (`modulation`, `text_pooling`, `null_text`, `qk_norm`, `ffn_dim`) express
  Wan2.1/Wan2.2's DiT, whose weights videodit.wan_diffusers maps onto this model; the 3D RoPE (axis split
  and interleaved pair rotation) is already Wan's.
- adaLN, the cross-attention output and the final layer are zero-initialised: a fresh model predicts 0
  and every block starts as the identity.
- Norms, RoPE, the timestep embedding and text pooling run in fp32, so the model is bf16-safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange

from videodit.attention import BACKENDS, attention, resolve_backend
from videodit.packing import PackedBatch, pack, token_timesteps, unpack
from videodit.rope import apply_rope, fractional_positions, rope_cos_sin, rope_dims


@dataclass
class DiTConfig:
    in_channels: int = 16  # latent channels c (the VAE's latent_channels)
    text_dim: int = 384  # width of the text encoder's token embeddings (all-MiniLM-L6-v2: 384)
    hidden_size: int = 64  # model width D
    depth: int = 2  # number of DiT blocks
    num_heads: int = 4  # attention heads nh; head dim dh = D / nh must be even and >= 6 (3D RoPE)
    patch: tuple[int, int, int] = (1, 2, 2)  # tubelet (pt, ph, pw) over latent (T, H, W)
    # Causal tubelet: latent frame 0 (the causal VAE's lone first frame, all there is of an image) gets
    # tokens of its own and later frames group in pt's (videodit.patchify), so a clean first frame can be
    # given as whole tokens. Changes nothing when pt = 1.
    causal_tubelet: bool = False
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    rope: Literal["integer", "fractional"] = "integer"  # token positions as grid indices, or NaViT-scaled
    rope_theta: float = 10000.0
    rope_ref_grid: tuple[int, int, int] = (0, 32, 32)  # fractional rope: (t, h, w) grid to scale to; 0: as is
    attention: Literal["auto", "sdpa", "flex", "xformers", "flash"] = "auto"  # see videodit/attention.py
    grad_checkpointing: bool = False  # recompute each block in backward (training only)
    # What the output head predicts: "velocity" (v = noise - x0) or "x0" (the clean latent; the flow
    # loss and the samplers turn it into v = (x_t - x0) / t, see videodit.flow.to_velocity). The x0 head
    # suits a model narrower than its patch (hidden_size < patch_dim): v and noise are full-rank in every
    # patch dimension and cannot pass a narrower residual stream, clean latents can (JiT, Li & He 2025).
    prediction: Literal["velocity", "x0"] = "velocity"
    frequency_embedding_size: int = 256  # sinusoidal timestep features before the timestep MLP
    norm_eps: float = 1e-6
    # Architecture options that express Wan2.1/Wan2.2's DiT (videodit.wan_diffusers maps its weights onto
    # them); the defaults are this project's own architecture.
    # "per_block": each block maps the conditioning vector through its own SiLU + Linear to 6 D (adaLN-zero).
    # "shared": one SiLU + Linear of the timestep embedding to 6 D serves every block, each block adds its
    # own learned (6, D) table, and the final layer adds a learned (2, D) table to the timestep embedding.
    modulation: Literal["per_block", "shared"] = "per_block"
    text_pooling: bool = True  # add the mean projected text token to the timestep embedding
    null_text: bool = True  # a sample without text tokens attends to a learned null token
    # RMS QK-norm over each head's dh channels, or over all D channels before the head split.
    qk_norm: Literal["per_head", "across_heads"] = "per_head"
    ffn_dim: int = 0  # MLP hidden width; 0 = mlp_ratio * D

    def __post_init__(self):
        for name in (
            "in_channels",
            "text_dim",
            "hidden_size",
            "depth",
            "num_heads",
            "frequency_embedding_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        rope_dims(self.hidden_size // self.num_heads)  # raises for an odd or too small head dim
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive integers, got {self.patch}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if len(self.rope_ref_grid) != 3 or min(self.rope_ref_grid) < 0:
            raise ValueError(f"rope_ref_grid must be three integers >= 0, got {self.rope_ref_grid}")
        if self.prediction not in ("velocity", "x0"):
            raise ValueError(f"prediction must be 'velocity' or 'x0', got {self.prediction!r}")
        if self.attention not in BACKENDS:
            raise ValueError(f"attention must be one of {list(BACKENDS)}, got {self.attention!r}")
        if self.modulation not in ("per_block", "shared"):
            raise ValueError(f"modulation must be 'per_block' or 'shared', got {self.modulation!r}")
        if self.qk_norm not in ("per_head", "across_heads"):
            raise ValueError(f"qk_norm must be 'per_head' or 'across_heads', got {self.qk_norm!r}")
        if self.ffn_dim < 0:
            raise ValueError(f"ffn_dim must be >= 0 (0 = mlp_ratio * hidden_size), got {self.ffn_dim}")

    @property
    def patch_dim(self) -> int:
        """D_in: channels of one patch token, c * pt * ph * pw."""
        return self.in_channels * math.prod(self.patch)

    @property
    def mlp_width(self) -> int:
        """Hidden width of each block's MLP."""
        return self.ffn_dim or int(self.hidden_size * self.mlp_ratio)


# Model sizes (hidden_size, depth, num_heads). Parameter counts with the defaults in_channels=16,
# text_dim=384, patch=(1, 2, 2), mlp_ratio=4:
#   XS    0.25 M   (the CPU default: tests, debug runs)
#   S    39.9 M
#   B   158.9 M
#   L   559.2 M
#   XL  824.4 M
DiT_sizes: dict[str, dict] = {
    "XS": dict(hidden_size=64, depth=2, num_heads=4),
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
}


def dit_config(size: str, **overrides) -> DiTConfig:
    """DiTConfig of a named size (see `DiT_sizes`), other fields from `overrides`."""
    if size not in DiT_sizes:
        raise ValueError(f"unknown DiT size {size!r}; choose one of {list(DiT_sizes)}")
    return DiTConfig(**{**DiT_sizes[size], **overrides})


def DiT_XS(**kw) -> VideoDiT:
    return VideoDiT(dit_config("XS", **kw))


def DiT_S(**kw) -> VideoDiT:
    return VideoDiT(dit_config("S", **kw))


def DiT_B(**kw) -> VideoDiT:
    return VideoDiT(dit_config("B", **kw))


def DiT_L(**kw) -> VideoDiT:
    return VideoDiT(dit_config("L", **kw))


def DiT_XL(**kw) -> VideoDiT:
    return VideoDiT(dit_config("XL", **kw))


DiT_models = {"XS": DiT_XS, "S": DiT_S, "B": DiT_B, "L": DiT_L, "XL": DiT_XL}


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm over the last axis, computed in fp32."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def layer_norm_affine(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` computed in fp32."""
    return F.layer_norm(
        x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps
    ).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(
            x.dtype
        )


class TimestepEmbedder(nn.Module):
    """t in [0, 1] `(S,)` -> `(S, D)`: sinusoidal features of 1000 t, then an MLP.

    1000 t is formed in float64 and rounded once to float32 (for float32 t that is the float32 product), so a
    float64 t = k / 1000 gives exactly the integer timestep k that diffusers' Wan models are fed."""

    def __init__(self, hidden_size: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (1000.0 * t.double()).float()[:, None] * freqs[None]  # (S, half)
        emb = torch.cat([args.cos(), args.sin(), args.new_zeros(t.shape[0], self.freq_dim % 2)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (S, D)


# Self-attention over this forward's tokens: (q, k, v) `(N, nh, dh)` each and the backend name ->
# `(N, nh, dh)`. Sequence parallelism passes one that attends over the whole row held across ranks
# (videodit.sequence_parallel); the default attends within each sample of the packed batch.
SelfAttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]


@dataclass
class _Segments:
    """Per-forward layout shared by all blocks."""

    sample_id: torch.Tensor  # (N,)
    mod_id: torch.Tensor  # (N,) row of the conditioning `c` (U, D) each token is modulated by
    cu: torch.Tensor  # (S+1,) video tokens
    max_len: int
    ctx_cu: torch.Tensor  # (S+1,) text tokens (null token inserted where a sample had none)
    ctx_max_len: int
    cos: torch.Tensor  # (N, dh/2)
    sin: torch.Tensor
    backend: str
    seqlens: list[int]  # video tokens per sample, as Python ints (read once per forward, not per layer)
    ctx_seqlens: list[int]  # text tokens per sample
    self_attention: SelfAttentionFn | None = None  # replaces the block-diagonal self-attention call


def qk_norms(cfg: DiTConfig) -> tuple[RMSNorm, RMSNorm]:
    """RMS norms for q and k: over each head's dh channels, or over all D channels ("across_heads")."""
    width = cfg.hidden_size if cfg.qk_norm == "across_heads" else cfg.hidden_size // cfg.num_heads
    return RMSNorm(width, cfg.norm_eps), RMSNorm(width, cfg.norm_eps)


def norm_split_heads(
    x: torch.Tensor, norm: RMSNorm, num_heads: int, across_heads: bool
) -> torch.Tensor:
    """q or k `(L, D)` -> RMS-normalised heads `(L, nh, dh)`, normalised before or after the head split."""
    if across_heads:
        return rearrange(norm(x), "l (nh dh) -> l nh dh", nh=num_heads)
    return norm(rearrange(x, "l (nh dh) -> l nh dh", nh=num_heads))


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D, self.nh = cfg.hidden_size, cfg.num_heads
        self.across = cfg.qk_norm == "across_heads"
        self.qkv = nn.Linear(D, 3 * D)
        self.q_norm, self.k_norm = qk_norms(cfg)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, seg: _Segments) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (N, D) each
        q = norm_split_heads(q, self.q_norm, self.nh, self.across)  # (N, nh, dh)
        k = norm_split_heads(k, self.k_norm, self.nh, self.across)
        q, k = apply_rope(q, seg.cos, seg.sin), apply_rope(k, seg.cos, seg.sin)
        v = rearrange(v, "n (nh dh) -> n nh dh", nh=self.nh)
        if seg.self_attention is not None:
            o = seg.self_attention(q, k, v, seg.backend)  # (N, nh, dh)
        else:
            o = attention(q, k, v, seg.cu, seg.cu, seg.max_len, seg.max_len, seg.backend,
                          (seg.seqlens, seg.seqlens))  # (N, nh, dh)
        return self.proj(rearrange(o, "n nh dh -> n (nh dh)"))


class CrossAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D, self.nh = cfg.hidden_size, cfg.num_heads
        self.across = cfg.qk_norm == "across_heads"
        self.q = nn.Linear(D, D)
        self.kv = nn.Linear(D, 2 * D)
        self.q_norm, self.k_norm = qk_norms(cfg)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, seg: _Segments) -> torch.Tensor:
        q = norm_split_heads(self.q(x), self.q_norm, self.nh, self.across)  # (N, nh, dh)
        k, v = self.kv(ctx).chunk(2, dim=-1)  # (M, D) each
        k = norm_split_heads(k, self.k_norm, self.nh, self.across)  # (M, nh, dh)
        v = rearrange(v, "m (nh dh) -> m nh dh", nh=self.nh)
        o = attention(q, k, v, seg.cu, seg.ctx_cu, seg.max_len, seg.ctx_max_len, seg.backend,
                      (seg.seqlens, seg.ctx_seqlens))
        return self.proj(rearrange(o, "n nh dh -> n (nh dh)"))


class DiTBlock(nn.Module):
    """Pre-norm block: adaLN-zero self-attention, cross-attention to text, adaLN-zero MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D, self.eps = cfg.hidden_size, cfg.norm_eps
        self.attn = SelfAttention(cfg)
        self.norm_cross = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.cross = CrossAttention(cfg)
        hidden = cfg.mlp_width
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D))
        self.shared = cfg.modulation == "shared"
        if self.shared:
            self.modulation = nn.Parameter(torch.zeros(6, D))  # added to the model's shared projection
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor, seg: _Segments) -> torch.Tensor:
        """`c`: one conditioning row per (sample, timestep) `(U, D)`; in "shared" modulation the shared
        projection `(U, 6D)`. `seg.mod_id` picks each token's row."""
        if self.shared:
            mod = (c.float() + self.modulation.float().flatten()).to(x.dtype)  # (U, 6D)
        else:
            mod = self.adaLN_modulation(c)  # (U, 6D)
        mod = mod[seg.mod_id]  # per token (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)  # (N, D) each
        x = x + gate_msa * self.attn(modulate(layer_norm(x, self.eps), shift_msa, scale_msa), seg)
        x = x + self.cross(layer_norm_affine(self.norm_cross, x), ctx, seg)
        x = x + gate_mlp * self.mlp(modulate(layer_norm(x, self.eps), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D, self.eps = cfg.hidden_size, cfg.norm_eps
        self.shared = cfg.modulation == "shared"
        if self.shared:
            self.modulation = nn.Parameter(torch.zeros(2, D))  # added to the timestep embedding itself
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.linear = nn.Linear(D, cfg.patch_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mod_id: torch.Tensor) -> torch.Tensor:
        if self.shared:
            mod = (c.float().repeat(1, 2) + self.modulation.float().flatten()).to(x.dtype)  # (U, 2D)
        else:
            mod = self.adaLN_modulation(c)  # (U, 2D)
        shift, scale = mod[mod_id].chunk(2, dim=-1)  # (N, D) each
        return self.linear(modulate(layer_norm(x, self.eps), shift, scale))  # (N, D_in)


class VideoDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        D = cfg.hidden_size
        self.x_embedder = nn.Linear(cfg.patch_dim, D)
        self.t_embedder = TimestepEmbedder(D, cfg.frequency_embedding_size)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"), nn.Linear(D, D)
        )
        if cfg.modulation == "shared":  # timestep embedding -> the 6 modulation vectors every block adds to
            self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        if cfg.null_text:
            self.null_text = nn.Parameter(torch.zeros(1, D))  # context of a sample whose text was dropped
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, small-normal embeddings; zeros for adaLN, cross-attention out, final layer.

        In "shared" modulation the shared projection and the tables start at zero (adaLN-zero as well)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.text_proj[0], self.text_proj[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.config.null_text:
            nn.init.normal_(self.null_text, std=0.02)
        shared = self.config.modulation == "shared"
        zeroed = [self.time_proj[-1]] if shared else []
        for block in self.blocks:
            zeroed += [block.cross.proj] if shared else [block.adaLN_modulation[-1], block.cross.proj]
        zeroed += [self.final_layer.linear] if shared else [self.final_layer.adaLN_modulation[-1],
                                                             self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _text_context(self, packed: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Projected text `(M, D)`, its sample ids `(M,)`, cu_seqlens and max length.

        A sample without text tokens gets the learned null token instead (with `null_text` off it attends
        to nothing: its cross-attention adds only the output bias)."""
        dtype = self.x_embedder.weight.dtype
        txt = self.text_proj(packed.text.to(dtype))  # (N_text, D)
        if not self.config.null_text:
            cu = packed.text_cu_seqlens.to(txt.device)
            return txt, packed.text_sample_id.to(txt.device), cu.to(torch.int32), packed.text_max_seqlen
        cu = packed.text_cu_seqlens.to(txt.device).long()
        lens = torch.diff(cu)  # (S,)
        empty = (lens == 0).nonzero().flatten()  # samples with no text
        new_lens = lens.clamp(min=1)
        new_cu = F.pad(new_lens.cumsum(0), (1, 0))  # (S+1,)
        sid = packed.text_sample_id.to(txt.device)
        if empty.numel():
            dest = torch.cat(
                [new_cu[sid] + torch.arange(sid.numel(), device=txt.device) - cu[sid], new_cu[empty]]
            )
            src = torch.cat([txt, self.null_text.to(dtype).expand(empty.numel(), -1)])  # (M, D), out of order
            txt = src[torch.argsort(dest)]  # (M, D) samples back to back
            sid = torch.repeat_interleave(torch.arange(lens.numel(), device=txt.device), new_lens)
        else:  # keep null_text in every graph, so data-parallel ranks always reduce the same parameters
            txt = txt + 0.0 * self.null_text.sum().to(dtype)
        return txt, sid, new_cu.to(torch.int32), int(new_lens.max())

    def _check(self, packed: PackedBatch, timesteps: torch.Tensor,
               token_timesteps: torch.Tensor | None = None) -> None:
        cfg = self.config
        if packed.tokens.shape[-1] != cfg.patch_dim or packed.channels != cfg.in_channels:
            raise ValueError(
                f"mismatched channels: packed tokens have {packed.channels} channels "
                f"({packed.tokens.shape[-1]} per patch), the model expects in_channels={cfg.in_channels} "
                f"({cfg.patch_dim} per patch)"
            )
        if tuple(packed.patch) != tuple(cfg.patch) or (packed.causal and cfg.patch[0] > 1) != (
            cfg.causal_tubelet and cfg.patch[0] > 1
        ):
            raise ValueError(
                f"batch was packed with patch {packed.patch} (causal {packed.causal}) but the model uses "
                f"patch {cfg.patch} (causal {cfg.causal_tubelet})"
            )
        if packed.text.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"text dim mismatch: text embeddings have dim {packed.text.shape[-1]}, "
                f"the model expects text_dim={cfg.text_dim}"
            )
        if timesteps.shape != (packed.num_samples,):
            raise ValueError(
                f"timesteps must have shape ({packed.num_samples},), got {tuple(timesteps.shape)}"
            )
        if token_timesteps is not None and token_timesteps.shape != (packed.tokens.shape[0],):
            raise ValueError(f"token_timesteps must have shape ({packed.tokens.shape[0]},) (one per packed "
                             f"token), got {tuple(token_timesteps.shape)}")

    def forward_packed(
        self,
        packed: PackedBatch,
        timesteps: torch.Tensor,
        skip_blocks: Sequence[frozenset[int] | set[int]] | None = None,
        token_timesteps: torch.Tensor | None = None,
        self_attention: SelfAttentionFn | None = None,
    ) -> torch.Tensor:
        """Packed tokens `(N, D_in)`, one timestep per sample `(S,)` in [0, 1] -> predictions `(N, D_in)`.

        `token_timesteps` `(N,)`, optional, gives each token its own timestep instead (conditioning tokens
        carry t = 0 beside their sample's noisy ones): the modulation is computed once per distinct (sample,
        timestep) and gathered per token, so its cost stays per sample. Without it, `timesteps` decide.
        `skip_blocks`, one set of block indices per sample: those blocks are identity for that sample's
        tokens (a weakened model for skip-layer guidance, see videodit.sampling). Attention never crosses
        samples, so a sample that skips nothing gets exactly the plain forward.
        `self_attention` replaces the self-attention call of every block (see `SelfAttentionFn`); all
        else runs per token or per sample, so it works unchanged on a slice of a row's tokens."""
        self._check(packed, timesteps, token_timesteps)
        if skip_blocks is not None:
            if len(skip_blocks) != packed.num_samples:
                raise ValueError(
                    f"skip_blocks has {len(skip_blocks)} entries for {packed.num_samples} samples"
                )
            bad = sorted(i for s in skip_blocks for i in s if not 0 <= i < self.config.depth)
            if bad:
                raise ValueError(
                    f"skip_blocks names block {bad[0]}; the model has blocks 0..{self.config.depth - 1}"
                )
        cfg = self.config
        dtype = self.x_embedder.weight.dtype
        device = self.x_embedder.weight.device
        x = self.x_embedder(packed.tokens.to(device=device, dtype=dtype))  # (N, D)
        sample_id = packed.sample_id.to(device)
        ctx, ctx_sid, ctx_cu, ctx_max = self._text_context(packed)  # (M, D)
        pooled = None
        if cfg.text_pooling:
            pooled = torch.zeros(packed.num_samples, cfg.hidden_size, device=device).index_add_(
                0, ctx_sid, ctx.float()
            )
            pooled = pooled / torch.diff(ctx_cu).clamp(min=1)[:, None].float()  # (S, D) mean text token
        if token_timesteps is None:
            c = self.t_embedder(timesteps.to(device)).float()  # (S, D)
            mod_id = sample_id
            rows = torch.arange(packed.num_samples, device=device)
        else:  # one row of c per distinct (sample, timestep) pair
            pairs = torch.stack([sample_id.double(), token_timesteps.to(device).double()], dim=1)  # (N, 2)
            distinct, mod_id = torch.unique(pairs, dim=0, return_inverse=True)  # (U, 2), (N,)
            c = self.t_embedder(distinct[:, 1]).float()  # (U, D)
            rows = distinct[:, 0].long()  # (U,) the sample of each row
        if pooled is not None:
            c = c + pooled[rows]  # (U, D) + the sample's mean text token
        c = c.to(dtype)
        block_c = self.time_proj(c) if cfg.modulation == "shared" else c  # (U, 6D) or (U, D)
        pos = packed.pos.to(device)
        if cfg.rope == "fractional":
            pos = fractional_positions(pos, sample_id, packed.grids, cfg.rope_ref_grid)
        cos, sin = rope_cos_sin(pos, cfg.hidden_size // cfg.num_heads, cfg.rope_theta)  # (N, dh/2)
        seg = _Segments(
            sample_id=sample_id,
            mod_id=mod_id,
            cu=packed.cu_seqlens.to(device),
            max_len=packed.max_seqlen,
            ctx_cu=ctx_cu,
            ctx_max_len=ctx_max,
            cos=cos,
            sin=sin,
            backend=resolve_backend(cfg.attention, device, dtype),
            seqlens=torch.diff(packed.cu_seqlens).tolist(),
            ctx_seqlens=torch.diff(ctx_cu).tolist(),
            self_attention=self_attention,
        )
        for index, block in enumerate(self.blocks):
            if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                y = torch.utils.checkpoint.checkpoint(block, x, block_c, ctx, seg, use_reentrant=False)
            else:
                y = block(x, block_c, ctx, seg)  # (N, D)
            if skip_blocks is not None and any(index in s for s in skip_blocks):
                skip = torch.tensor([index in s for s in skip_blocks], device=device)[sample_id]  # (N,)
                y = torch.where(skip[:, None], x, y)
            x = y
        return self.final_layer(x, c, mod_id)  # (N, D_in)

    def forward_samples(
        self,
        latents: list[torch.Tensor],
        timesteps: torch.Tensor,
        text_embeds: list[torch.Tensor],
        skip_blocks: Sequence[frozenset[int] | set[int]] | None = None,
        frame_timesteps: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """latents [(C, T_i, H_i, W_i)], timesteps `(B,)`, text [(L_i, text_dim)] -> outputs like latents.
        `frame_timesteps`, optional: one `(T_i,)` timestep per latent frame of each sample (conditioning
        frames at 0), instead of `timesteps`; frames that share a token must share a timestep.
        `skip_blocks`: see `forward_packed`."""
        if len(latents) == 0:
            raise ValueError("empty sample list: forward_samples needs at least one latent")
        for i, z in enumerate(latents):
            if z.dim() != 4 or z.shape[0] != self.config.in_channels:
                raise ValueError(
                    f"mismatched channels: latent {i} has shape {tuple(z.shape)}, "
                    f"the model expects (C={self.config.in_channels}, T, H, W)"
                )
        packed = pack(latents, text_embeds, self.config.patch, causal=self.config.causal_tubelet)
        per_token = None if frame_timesteps is None else token_timesteps(packed, frame_timesteps)
        out = self.forward_packed(packed, timesteps, skip_blocks, per_token)
        return [z.to(latents[0].dtype) for z in unpack(packed, out, self.config.in_channels)]

    @classmethod
    def from_pretrained(
        cls, path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> VideoDiT:
        """Load our checkpoint folders, diffusers Wan transformer or pipeline folders, or the original Wan
        layout, dispatching on the folder's config (see videodit.pretrained)."""
        from videodit.pretrained import load_pretrained

        return load_pretrained(path, device, dtype)

    def forward(self, packed: PackedBatch, timesteps: torch.Tensor,
                token_timesteps: torch.Tensor | None = None,
                self_attention: SelfAttentionFn | None = None) -> torch.Tensor:
        """Same as `forward_packed` (so DeepSpeed/DDP wrappers can call the module)."""
        return self.forward_packed(packed, timesteps, token_timesteps=token_timesteps,
                                   self_attention=self_attention)
