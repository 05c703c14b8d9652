"""NaViT packing: many samples of any shape -> one flat sequence of their real tokens, and back.

The model runs on ONE flat sequence holding every sample's (kept) tokens back to back, no padding.
`cu_seqlens` marks where each sample starts, so attention stays inside a sample; `sample_id` lets
per-sample quantities (timestep modulation) be gathered per token; `pos` holds each token's integer
(t, h, w) position on its own sample's grid, so positions never depend on a sample's place in the row.
Text tokens are packed the same way (`text`, `text_sample_id`, `text_cu_seqlens`).

"Rows of a fixed token budget" are a data-loader concept: `plan_rows` decides which samples go
together into one forward pass (first-fit decreasing), `pack` then builds that pass's batch.

NaViT token dropping: `pack(..., drop_rate=r)` keeps a random subset of round(L * (1 - r)) tokens of each
sample (at least one), `r` a constant or a function of the sample's token count L. `keep` records the kept
indices so `pack_like` drops the same tokens of a target and `unpack` puts predictions back (zeros where
dropped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from videodit.patchify import Grid, Patch, lead_frames, patch_grid, spacetime_patchify, spacetime_unpatchify

DropRate = float | Callable[[int], float]


@dataclass
class PackedBatch:
    """One forward pass's worth of samples. N = total kept video tokens, S = samples, N_text = text tokens."""

    tokens: torch.Tensor  # (N, D_in) patch tokens, samples back to back
    sample_id: torch.Tensor  # (N,) int64, which sample each token belongs to
    pos: torch.Tensor  # (N, 3) float, (t, h, w) integer position of each token on its sample's grid
    cu_seqlens: torch.Tensor  # (S+1,) int32, token offsets of the samples
    max_seqlen: int  # longest sample (kept tokens)
    grids: list[Grid]  # per sample (T', H', W') token grid
    sizes: list[tuple[int, int, int]]  # per sample latent (T, H, W) before padding
    keep: list[torch.Tensor]  # per sample int64 indices (into its full grid) of the kept tokens, sorted
    text: torch.Tensor  # (N_text, D_text) text tokens, samples back to back
    text_sample_id: torch.Tensor  # (N_text,) int64
    text_cu_seqlens: torch.Tensor  # (S+1,) int32; a sample may have zero text tokens
    text_max_seqlen: int
    patch: Patch
    channels: int
    causal: bool = False  # causal tubelet: latent frame 0 has tokens of its own (videodit.patchify)

    @property
    def num_samples(self) -> int:
        return len(self.grids)

    @property
    def seqlens(self) -> list[int]:
        return [int(k.numel()) for k in self.keep]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PackedBatch:
        """Move tensors to `device`; cast the float `tokens`/`text` (not positions) to `dtype`."""
        return dataclasses.replace(
            self,
            tokens=self.tokens.to(device=device, dtype=dtype or self.tokens.dtype),
            sample_id=self.sample_id.to(device),
            pos=self.pos.to(device),
            cu_seqlens=self.cu_seqlens.to(device),
            keep=[k.to(device) for k in self.keep],
            text=self.text.to(device=device, dtype=dtype or self.text.dtype),
            text_sample_id=self.text_sample_id.to(device),
            text_cu_seqlens=self.text_cu_seqlens.to(device),
        )


def plan_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: group sample indices into rows whose total length is <= `budget`.

    Returns rows of sample indices (each row sorted by decreasing length). ValueError names any sample
    longer than the budget.
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"sample {i} has {n} tokens, more than the row token budget {budget}; a longer "
                             f"sample needs sequence parallelism (parallel.sequence > 1 splits a row "
                             f"across ranks)")
        if n < 0:
            raise ValueError(f"sample {i} has a negative length {n}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(budget - n)
    return rows


def grid_positions(grid: Grid, device: torch.device | str | None = None) -> torch.Tensor:
    """(t, h, w) integer positions `(T'H'W', 3)` float of a grid, in the raster order of patchify."""
    axes = [torch.arange(g, device=device, dtype=torch.float32) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (L, 3)


def _keep_indices(num_tokens: int, drop_rate: DropRate, generator: torch.Generator | None) -> torch.Tensor:
    rate = drop_rate(num_tokens) if callable(drop_rate) else drop_rate
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"token drop rate must be in [0, 1), got {rate} for a sample of {num_tokens} tokens")
    if rate == 0.0:
        return torch.arange(num_tokens)
    kept = max(1, round(num_tokens * (1.0 - rate)))
    return torch.randperm(num_tokens, generator=generator)[:kept].sort().values


def _common_width(tensors: Sequence[torch.Tensor], layout: str, axis: int, noun: str, width: str) -> int:
    """The size all `tensors` share on `axis`, each of `len(layout)` dims; ValueError naming the first that
    is not."""
    ndim = len(layout.split(","))
    common = None
    for i, x in enumerate(tensors):
        if x.dim() != ndim:
            raise ValueError(f"{noun} {i} must be ({layout}), got shape {tuple(x.shape)}")
        if common is None:
            common = x.shape[axis]
        elif x.shape[axis] != common:
            raise ValueError(f"{noun} {i} has {x.shape[axis]} {width} but {noun} 0 has {common}: "
                             f"mismatched {width}")
    return int(common)


def _check_latents(latents: Sequence[torch.Tensor]) -> int:
    if len(latents) == 0:
        raise ValueError("empty sample list: pack needs at least one latent")
    return _common_width(latents, "C, T, H, W", 0, "latent", "channels")


def _cu(lengths: list[int], device: torch.device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    if lengths:
        cu[1:] = torch.tensor(lengths, device=device).cumsum(0)
    return cu


def pack(
    latents: Sequence[torch.Tensor],
    text_embeds: Sequence[torch.Tensor],
    patch: Patch,
    drop_rate: DropRate = 0.0,
    generator: torch.Generator | None = None,
    causal: bool = False,
) -> PackedBatch:
    """Patchify and pack `latents` [(C, T_i, H_i, W_i)] with their `text_embeds` [(L_i, D_text)].

    `drop_rate` (constant or `f(num_tokens) -> rate`) drops that fraction of each sample's tokens at random
    (NaViT); `generator` makes the choice reproducible. `causal`: the causal tubelet of `spacetime_patchify`.
    """
    channels = _check_latents(latents)
    if len(text_embeds) != len(latents):
        raise ValueError(f"got {len(latents)} latents but {len(text_embeds)} text embeddings")
    _common_width(text_embeds, "L_text, D_text", 1, "text embedding", "dims")
    device = latents[0].device
    tokens, pos, ids, grids, sizes, keep = [], [], [], [], [], []
    for i, z in enumerate(latents):
        tok, grid = spacetime_patchify(z, patch, causal)  # (L_i, D_in)
        k = _keep_indices(tok.shape[0], drop_rate, generator).to(device)
        tokens.append(tok[k])
        pos.append(grid_positions(grid, device)[k])  # (L_kept, 3)
        ids.append(torch.full((k.numel(),), i, dtype=torch.int64, device=device))
        grids.append(grid)
        sizes.append(tuple(z.shape[1:]))
        keep.append(k)
    lengths = [int(k.numel()) for k in keep]
    text_lengths = [int(e.shape[0]) for e in text_embeds]
    text_device = text_embeds[0].device
    return PackedBatch(
        tokens=torch.cat(tokens),  # (N, D_in)
        sample_id=torch.cat(ids),
        pos=torch.cat(pos),
        cu_seqlens=_cu(lengths, device),
        max_seqlen=max(lengths),
        grids=grids,
        sizes=sizes,
        keep=keep,
        text=torch.cat(list(text_embeds)),  # (N_text, D_text)
        text_sample_id=torch.repeat_interleave(
            torch.arange(len(text_lengths), device=text_device),
            torch.tensor(text_lengths, device=text_device),
        ),
        text_cu_seqlens=_cu(text_lengths, text_device),
        text_max_seqlen=max(text_lengths),
        patch=tuple(patch),
        channels=channels,
        causal=causal,
    )


def pack_like(packed: PackedBatch, latents: Sequence[torch.Tensor]) -> torch.Tensor:
    """Patchify `latents` (same shapes as the packed samples, any channel count, e.g. velocity targets)
    and pack them with exactly `packed`'s layout and dropped tokens -> `(N, C*pt*ph*pw)`."""
    _check_latents(latents)
    if len(latents) != packed.num_samples:
        raise ValueError(f"pack_like got {len(latents)} latents for a batch of {packed.num_samples} samples")
    out = []
    for i, (z, k) in enumerate(zip(latents, packed.keep)):
        if tuple(z.shape[1:]) != packed.sizes[i]:
            raise ValueError(
                f"latent {i} has size {tuple(z.shape[1:])} but the packed sample has {packed.sizes[i]}"
            )
        tok, _ = spacetime_patchify(z, packed.patch, packed.causal)  # (L_i, D)
        out.append(tok[k.to(tok.device)])
    return torch.cat(out)  # (N, D)


def unpack(packed: PackedBatch, tokens: torch.Tensor, channels: int) -> list[torch.Tensor]:
    """Per-token outputs `(N, channels*pt*ph*pw)` -> [(channels, T_i, H_i, W_i)]; dropped tokens -> 0."""
    n = int(packed.cu_seqlens[-1])
    if tokens.dim() != 2 or tokens.shape[0] != n:
        raise ValueError(f"unpack expects ({n}, D) tokens for this batch, got {tuple(tokens.shape)}")
    out = []
    for i, part in enumerate(torch.split(tokens, packed.seqlens)):
        grid = packed.grids[i]
        full = part.new_zeros(grid[0] * grid[1] * grid[2], tokens.shape[1])  # (L_i, D)
        full[packed.keep[i].to(part.device)] = part
        out.append(spacetime_unpatchify(full, grid, packed.patch, channels, size=packed.sizes[i],
                                        causal=packed.causal))
    return out


def num_tokens(size: tuple[int, int, int], patch: Patch, causal: bool = False) -> int:
    """Number of tokens of a latent of size (T, H, W) before dropping."""
    t, h, w = patch_grid(size, patch, causal)
    return t * h * w


def frame_groups(packed: PackedBatch, sample: int) -> torch.Tensor:
    """Temporal token group of each latent frame of one packed sample -> `(T,)` int64."""
    T = packed.sizes[sample][0]
    return (torch.arange(T) + lead_frames(packed.patch, packed.causal)) // packed.patch[0]


def token_timesteps(packed: PackedBatch, frame_timesteps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-latent-frame timesteps, one `(T_i,)` tensor per sample -> one timestep per packed token `(N,)`.

    A token takes its temporal group's timestep, so the frames a token covers must share one (with a
    causal tubelet latent frame 0 is a group of its own: a clean first frame is t = 0 alone)."""
    if len(frame_timesteps) != packed.num_samples:
        raise ValueError(f"got frame timesteps for {len(frame_timesteps)} samples, the batch has "
                         f"{packed.num_samples}")
    out = []
    for i, t in enumerate(frame_timesteps):
        t = torch.as_tensor(t, dtype=torch.float32).flatten().cpu()
        T = packed.sizes[i][0]
        if t.numel() != T:
            raise ValueError(f"sample {i} has {T} latent frames but {t.numel()} frame timesteps")
        groups = frame_groups(packed, i)  # (T,)
        per_group = torch.zeros(packed.grids[i][0])
        per_group[groups] = t  # a group's frames must agree, checked next
        if not torch.equal(per_group[groups], t):
            raise ValueError(f"sample {i}: latent frames that share a token group must share a timestep "
                             f"(patch {packed.patch}, causal {packed.causal}), got {t.tolist()}")
        keep = packed.keep[i].cpu()
        hw = packed.grids[i][1] * packed.grids[i][2]
        out.append(per_group[keep // hw])  # token index -> its temporal group
    device = packed.tokens.device
    return torch.cat(out).to(device)  # (N,)
