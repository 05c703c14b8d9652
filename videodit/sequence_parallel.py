"""Ulysses sequence parallelism over a packed row: tokens split across ranks, heads split in attention.

A row (one `PackedBatch`: N tokens of S samples back to back) is cut into contiguous token slices, one
per rank of a sequence-parallel (SP) group of `size` ranks. Slice sizes differ by at most one, so any
N >= size splits, and a sample may straddle ranks. Every rank runs the whole model on its slice
(`shard_packed` makes the slice a PackedBatch of the samples it touches): patch embedding, RoPE,
per-token modulation, cross-attention to a sample's text and the MLP are per token or per sample, so
they need nothing from other ranks. Only self-attention does, and `UlyssesAttention` replaces it:

    q, k, v (n_r, nh, dh) on rank r
      --all-to-all-->  (N, nh/size, dh): every token of the row, the r-th group of heads
      --block-diagonal attention over the row's whole samples (any backend of videodit.attention)-->
      --all-to-all back-->  (n_r, nh, dh)

Uneven slices travel as uneven all-to-all splits, so no padding token ever enters attention. The
all-to-all's backward is the reverse all-to-all, so each token's gradient returns to the rank holding it.

Loss and gradients: `sample_means` sums per-sample partial sums over the group, so every rank holds the
whole row's per-sample losses, and its backward is the identity, so each rank back-propagates through
its own tokens only. The row's parameter gradient is then the SUM of the ranks' gradients
(`sum_gradients`), never their mean. A reducer that averages over every rank (DeepSpeed given no
`mpu`, at any ZeRO stage; DDP) gets that sum when each rank back-propagates `scaled_for_mean_reducer`:
the loss times the sequence-parallel size.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from einops import rearrange

from videodit.attention import attention
from videodit.packing import PackedBatch, pack, token_timesteps, unpack


@dataclass
class ParallelConfig:
    sequence: int = 1  # ranks that share one packed row (Ulysses); data parallelism runs over the rest

    def __post_init__(self):
        if self.sequence < 1:
            raise ValueError(f"parallel.sequence must be >= 1, got {self.sequence}")


@dataclass
class ParallelGroups:
    """This rank's place in a (data, sequence) grid of ranks. Ranks [k*S, (k+1)*S) share rows."""

    sequence_group: dist.ProcessGroup | None
    sequence_rank: int
    sequence_size: int
    data_group: dist.ProcessGroup | None
    data_rank: int
    data_size: int


def parallel_groups(sequence: int) -> ParallelGroups:
    """Split the initialised world into sequence-parallel groups of `sequence` consecutive ranks (one
    node's ranks stay together: the all-to-alls are the heaviest traffic) and data-parallel groups of the
    ranks at the same place in their sequence group. All ranks must call it together."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if sequence < 1 or world % sequence:
        raise ValueError(f"parallel.sequence={sequence} must be >= 1 and divide the world size {world}")
    sequence_group = data_group = None
    for k in range(world // sequence):  # every rank creates every group, in the same order
        ranks = list(range(k * sequence, (k + 1) * sequence))
        group = dist.new_group(ranks)
        if rank in ranks:
            sequence_group = group
    for j in range(sequence):
        ranks = list(range(j, world, sequence))
        group = dist.new_group(ranks)
        if rank in ranks:
            data_group = group
    return ParallelGroups(sequence_group, rank % sequence, sequence, data_group, rank // sequence,
                          world // sequence)


def split_sizes(num_tokens: int, size: int) -> list[int]:
    """Tokens held by each of `size` ranks: contiguous slices whose sizes differ by at most one."""
    if size < 1:
        raise ValueError(f"sequence-parallel size must be >= 1, got {size}")
    if num_tokens < size:
        raise ValueError(f"a row of {num_tokens} tokens cannot be split across {size} sequence-parallel "
                         f"ranks (each needs at least one token)")
    base, extra = divmod(num_tokens, size)
    return [base + (r < extra) for r in range(size)]


@dataclass
class RowShard:
    """Where one rank's token slice sits in its packed row."""

    rank: int
    splits: list[int]  # (size,) tokens held by each rank of the group, in rank order
    first_sample: int  # row index of this slice's first sample; local sample j is row sample first_sample + j
    row_seqlens: list[int]  # (S,) tokens of every sample of the row
    row_cu_seqlens: torch.Tensor  # (S+1,) int32 token offsets of the row's samples

    @property
    def size(self) -> int:
        return len(self.splits)

    @property
    def start(self) -> int:
        return sum(self.splits[: self.rank])

    @property
    def end(self) -> int:
        return self.start + self.splits[self.rank]

    @property
    def num_samples(self) -> int:
        return len(self.row_seqlens)


def shard_packed(packed: PackedBatch, rank: int, size: int) -> tuple[PackedBatch, RowShard]:
    """Rank `rank`'s slice of the row `packed` -> (the slice as a PackedBatch, where it sits in the row).

    The slice holds the samples with at least one token on this rank (their grids, sizes, text), the
    kept-token indices of its own part of each, and local `sample_id`/`cu_seqlens`. Timesteps and other
    per-sample inputs of the model are indexed with `local_samples(shard)`."""
    if not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    row_cu = packed.cu_seqlens.cpu().long()
    splits = split_sizes(int(row_cu[-1]), size)
    start = sum(splits[:rank])
    end = start + splits[rank]
    first = int(torch.searchsorted(row_cu[1:], torch.tensor(start), right=True))  # sample of token `start`
    last = int(torch.searchsorted(row_cu[1:], torch.tensor(end - 1), right=True))  # sample of token end - 1
    lo = [max(int(row_cu[s]), start) - int(row_cu[s]) for s in range(first, last + 1)]  # local part of each
    hi = [min(int(row_cu[s + 1]), end) - int(row_cu[s]) for s in range(first, last + 1)]
    lengths = [b - a for a, b in zip(lo, hi)]
    text_cu = packed.text_cu_seqlens.cpu().long()
    t0, t1 = int(text_cu[first]), int(text_cu[last + 1])
    text_lengths = torch.diff(text_cu[first : last + 2]).tolist()
    device, text_device = packed.cu_seqlens.device, packed.text_cu_seqlens.device
    local = dataclasses.replace(
        packed,
        tokens=packed.tokens[start:end],  # (n_r, D_in)
        sample_id=packed.sample_id[start:end] - first,
        pos=packed.pos[start:end],  # (n_r, 3)
        cu_seqlens=_offsets(lengths, device),
        max_seqlen=max(lengths),
        grids=packed.grids[first : last + 1],
        sizes=packed.sizes[first : last + 1],
        keep=[packed.keep[s][a:b] for s, a, b in zip(range(first, last + 1), lo, hi)],
        text=packed.text[t0:t1],  # (N_text_local, D_text)
        text_sample_id=packed.text_sample_id[t0:t1] - first,
        text_cu_seqlens=_offsets(text_lengths, text_device),
        text_max_seqlen=max(text_lengths),
    )
    shard = RowShard(rank=rank, splits=splits, first_sample=first,
                     row_seqlens=torch.diff(row_cu).tolist(), row_cu_seqlens=row_cu.to(device, torch.int32))
    return local, shard


def local_samples(local: PackedBatch, shard: RowShard) -> slice:
    """Row sample indices of the slice's samples, as a slice (index per-sample row inputs with it)."""
    return slice(shard.first_sample, shard.first_sample + local.num_samples)


def _offsets(lengths: list[int], device: torch.device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu.to(device)


@dataclass
class CommTimer:
    """Seconds spent in the all-to-alls (forward and backward) of the attentions that share it."""

    seconds: float = 0.0
    calls: int = 0


def _exchange(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group, timer: CommTimer | None):
    """all_to_all_single along axis 0: rows [sum(in_splits[:g]), ...) go to rank g of `group`."""
    out = x.new_empty(sum(out_splits), *x.shape[1:])
    if timer is not None and x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    if timer is not None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        timer.seconds += time.perf_counter() - t0
        timer.calls += 1
    return out


class _AllToAll(torch.autograd.Function):
    """Differentiable all-to-all along axis 0; the gradient goes back along the reverse exchange."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group, timer):
        ctx.splits, ctx.group, ctx.timer = (out_splits, in_splits), group, timer
        return _exchange(x, out_splits, in_splits, group, timer)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return _exchange(grad, in_splits, out_splits, ctx.group, ctx.timer), None, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None,
               timer: CommTimer | None = None) -> torch.Tensor:
    """Send rows [sum(in_splits[:g]), sum(in_splits[:g+1])) of `x` to rank g of `group`; receive
    out_splits[g] rows from rank g, stacked in rank order. Differentiable."""
    return _AllToAll.apply(x, list(out_splits), list(in_splits), group, timer)


class UlyssesAttention:
    """Self-attention over a whole packed row whose tokens are split across `group` (see module doc).

    Pass it to `VideoDiT.forward_packed(..., self_attention=...)`; it is called as
    `(q, k, v, backend)` with this rank's `(n_r, nh, dh)` slices and returns `(n_r, nh, dh)`."""

    def __init__(self, shard: RowShard, group=None, timer: CommTimer | None = None):
        self.shard, self.group, self.timer = shard, group, timer
        self.max_seqlen = max(shard.row_seqlens)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
        shard, size = self.shard, self.shard.size
        n, nh = q.shape[0], q.shape[1]
        if n != shard.splits[shard.rank]:
            raise ValueError(f"rank {shard.rank} holds {shard.splits[shard.rank]} tokens of the row, "
                             f"attention got {n}")
        if nh % size:
            raise ValueError(f"num_heads {nh} must be divisible by the sequence-parallel size {size}")
        qkv = torch.stack((q, k, v))  # (3, n_r, nh, dh)
        send = rearrange(qkv, "three n (g hg) dh -> (g n) three hg dh", g=size)  # rank g gets head group g
        row = all_to_all(send, shard.splits, [n] * size, self.group, self.timer)  # (N, 3, hg, dh) row order
        q, k, v = rearrange(row, "n three hg dh -> three n hg dh").contiguous().unbind(0)  # (N, hg, dh) each
        cu, lens = shard.row_cu_seqlens, shard.row_seqlens
        o = attention(q, k, v, cu, cu, self.max_seqlen, self.max_seqlen, backend, (lens, lens))  # (N, hg, dh)
        back = all_to_all(o, [n] * size, shard.splits, self.group, self.timer)  # (size * n_r, hg, dh)
        return rearrange(back, "(g n) hg dh -> n (g hg) dh", g=size)  # (n_r, nh, dh)


def forward_shard(model, packed: PackedBatch, timesteps: torch.Tensor, rank: int, size: int, group=None,
                  timer: CommTimer | None = None, token_timesteps: torch.Tensor | None = None,
                  skip_blocks=None) -> tuple[torch.Tensor, PackedBatch, RowShard]:
    """Run `model` (a VideoDiT, or a wrapper whose forward takes `self_attention`) on rank `rank`'s slice
    of the row `packed` with row timesteps `(S,)` (and, optionally, the row's per-token timesteps `(N,)`
    and per-sample `skip_blocks`) -> (predictions `(n_r, D_in)` of the slice's tokens, the slice, its
    shard). All ranks of `group` call it together with the same row."""
    local, shard = shard_packed(packed, rank, size)
    attend = UlyssesAttention(shard, group, timer)
    mine = local_samples(local, shard)
    extra = {} if token_timesteps is None else {"token_timesteps": token_timesteps[shard.start : shard.end]}
    if skip_blocks is not None:
        extra["skip_blocks"] = list(skip_blocks)[mine]
    out = model(local, timesteps[mine], self_attention=attend, **extra)  # (n_r, D_in)
    return out, local, shard


class _SumOverGroup(torch.autograd.Function):
    """all-reduce(sum) in the forward; identity in the backward (each rank owns its summands)."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def sample_means(values: torch.Tensor, local: PackedBatch, shard: RowShard, group=None) -> torch.Tensor:
    """Per-token values `(n_r,)` of this rank's slice -> mean over each whole sample of the row `(S,)`,
    the same on every rank of `group`; gradients reach this rank's tokens only (see module doc)."""
    if values.shape != (local.tokens.shape[0],):
        raise ValueError(f"sample_means expects ({local.tokens.shape[0]},) values, got {tuple(values.shape)}")
    sample = local.sample_id.to(values.device) + shard.first_sample  # (n_r,) row sample index
    sums = values.new_zeros(shard.num_samples).index_add(0, sample, values)  # (S,) this rank's part
    sums = _SumOverGroup.apply(sums, group) if shard.size > 1 else sums
    return sums / torch.tensor(shard.row_seqlens, device=values.device, dtype=values.dtype)


def scaled_for_mean_reducer(loss: torch.Tensor, sequence_size: int) -> torch.Tensor:
    """The loss to back-propagate when gradients are AVERAGED over all data x sequence ranks (DeepSpeed,
    DDP): times `sequence_size`, so the average is the sum over each row's sequence-parallel ranks,
    averaged over the data-parallel rows. Log the unscaled loss."""
    return loss * sequence_size


def sum_gradients(module: torch.nn.Module, group=None) -> None:
    """Sum every parameter gradient over `group` (the sequence-parallel ranks of one row), in place,
    as one flat all-reduce."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def gather_row(local_out: torch.Tensor, shard: RowShard, group=None) -> torch.Tensor:
    """Every rank's per-token outputs `(n_r, ...)` -> the whole row's `(N, ...)`, on every rank
    (inference: unpack the row's predictions). Not differentiable."""
    size, longest = shard.size, max(shard.splits)
    padded = local_out.new_zeros(longest, *local_out.shape[1:])  # all_gather needs equal shapes
    padded[: local_out.shape[0]] = local_out
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, shard.splits)])  # (N, ...)


class ShardedSampler:
    """A VideoDiT for diffusion sampling across a sequence-parallel group: `forward_samples` packs the
    samples into one row as the model does, runs this rank's slice (`forward_shard`) and gathers the whole
    row's predictions on every rank (`gather_row`), so every rank takes the same solver step and holds the
    same latents. All ranks of `group` call it together with the same samples. Has the model's `config`."""

    def __init__(self, model, rank: int, size: int, group=None):
        if model.config.num_heads % size:
            raise ValueError(f"the model's {model.config.num_heads} heads cannot be split across {size} "
                             f"sequence-parallel ranks: the number of ranks must divide the heads")
        self.model, self.rank, self.size, self.group = model, rank, size, group
        self.config = model.config

    @torch.no_grad()
    def forward_samples(self, latents: list[torch.Tensor], timesteps: torch.Tensor,
                        text_embeds: list[torch.Tensor], skip_blocks=None,
                        frame_timesteps=None) -> list[torch.Tensor]:
        """As `VideoDiT.forward_samples`: latents [(C, T_i, H_i, W_i)] -> outputs like latents."""
        cfg = self.config
        packed = pack(latents, text_embeds, cfg.patch, causal=cfg.causal_tubelet)
        per_token = None if frame_timesteps is None else token_timesteps(packed, frame_timesteps)  # (N,)
        out, _, shard = forward_shard(self.model.forward_packed, packed, timesteps, self.rank, self.size,
                                      self.group, token_timesteps=per_token, skip_blocks=skip_blocks)
        row = gather_row(out, shard, self.group)  # (N, D_in)
        return [z.to(latents[0].dtype) for z in unpack(packed, row, cfg.in_channels)]
