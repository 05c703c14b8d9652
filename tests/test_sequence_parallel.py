"""Ulysses sequence parallelism: 2 CPU ranks (gloo, spawned here) against the single-rank model."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videodit.flow import per_sample_mean
from videodit.model import DiTConfig, VideoDiT
from videodit.packing import pack
from videodit.sequence_parallel import (
    ParallelConfig,
    forward_shard,
    gather_row,
    sample_means,
    shard_packed,
    split_sizes,
    sum_gradients,
)

TEXT_DIM = 12
LR = 0.1


def scenario(rope: str = "fractional", grad_checkpointing: bool = False):
    """A perturbed tiny fp32 model, a row of 5 mixed shapes (63 tokens: the two ranks hold 32 and 31, the
    first sample straddles them), row timesteps, per-token targets and per-sample loss weights."""
    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(in_channels=4, text_dim=TEXT_DIM, hidden_size=48, depth=2, num_heads=4,
                               rope=rope, attention="sdpa", grad_checkpointing=grad_checkpointing))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # off the (partly zero) init, so every gradient is non-trivial
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    shapes = [(3, 6, 8), (1, 5, 7), (2, 4, 4), (1, 4, 4), (1, 2, 6)]  # 36 + 12 + 8 + 4 + 3 tokens
    latents = [torch.randn(4, *s, generator=g) for s in shapes]
    texts = [torch.randn(n, TEXT_DIM, generator=g) for n in (5, 0, 3, 2, 4)]
    packed = pack(latents, texts, model.config.patch)
    t = torch.rand(len(shapes), generator=g)
    target = torch.randn(packed.tokens.shape, generator=g)  # (N, D_in)
    weights = torch.rand(len(shapes), generator=g) + 0.5  # (S,) unequal, so per-sample sums must be right
    return model, packed, t, target, weights


def reference(rope: str = "fractional"):
    """Single-rank forward, loss, gradients and parameters after one SGD step."""
    model, packed, t, target, weights = scenario(rope)
    out = model.forward_packed(packed, t)  # (N, D_in)
    err = (out - target).pow(2).mean(dim=1)  # (N,)
    loss = (per_sample_mean(err, packed.sample_id, packed.num_samples) * weights).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return out.detach(), loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, size: int, init_file: str, out_dir: str, rope: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        model, packed, t, target, weights = scenario(rope)
        out, local, shard = forward_shard(model, packed, t, rank, size)
        err = (out - target[shard.start : shard.end]).pow(2).mean(dim=1)  # (n_r,)
        loss = (sample_means(err, local, shard) * weights).sum()
        loss.backward()
        own = {n: p.grad.clone() for n, p in model.named_parameters()}  # this rank's part only
        sum_gradients(model)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        torch.optim.SGD(model.parameters(), lr=LR).step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        row = gather_row(out.detach(), shard)
        # the same with each block recomputed in backward: the recompute repeats the all-to-alls
        model, packed, t, target, weights = scenario(rope, grad_checkpointing=True)
        out, local, shard = forward_shard(model, packed, t, rank, size)
        err = (out - target[shard.start : shard.end]).pow(2).mean(dim=1)
        (sample_means(err, local, shard) * weights).sum().backward()
        sum_gradients(model)
        recomputed = {n: p.grad.clone() for n, p in model.named_parameters()}
        result = dict(out=row, loss=loss.detach(), own=own, grads=grads, params=params, recomputed=recomputed,
                      tokens=out.shape[0])
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, size: int = 2, rope: str = "fractional") -> list[dict]:
    mp.spawn(_worker, args=(size, str(tmp_path / "init"), str(tmp_path), rope), nprocs=size)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(size)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("sp2"))


def test_sp2_forward_and_loss_match_one_rank(two_ranks):
    out, loss, _, _ = reference()
    assert [r["tokens"] for r in two_ranks] == [32, 31]  # uneven split, a sample straddles the ranks
    for r in two_ranks:
        assert (r["out"] - out).abs().max() <= 1e-5
        assert abs(float(r["loss"]) - float(loss)) <= 1e-5


def test_sp2_all_gradients_match_one_rank(two_ranks):
    _, _, grads, _ = reference()
    for r in two_ranks:
        assert set(r["grads"]) == set(grads)
        for name, g in grads.items():
            assert g.abs().max() > 0, name  # every parameter takes part
            assert (r["grads"][name] - g).abs().max() <= 1e-5, name
        for name, g in grads.items():
            assert (r["recomputed"][name] - g).abs().max() <= 1e-5, name
    # each rank alone holds only part of the gradient: the sum over ranks is what matches
    assert max((two_ranks[0]["own"][n] - g).abs().max() for n, g in grads.items()) > 1e-3


def test_sp2_sgd_step_matches_one_rank(two_ranks):
    _, _, _, params = reference()
    for r in two_ranks:
        for name, p in params.items():
            assert (r["params"][name] - p).abs().max() <= 1e-5, name


def test_split_sizes():
    assert split_sizes(63, 2) == [32, 31]
    assert split_sizes(8, 4) == [2, 2, 2, 2]
    assert split_sizes(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="2 tokens cannot be split across 3"):
        split_sizes(2, 3)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_tile_the_row(size):
    _, packed, *_ = scenario()
    pieces = [shard_packed(packed, r, size) for r in range(size)]
    assert torch.equal(torch.cat([p.tokens for p, _ in pieces]), packed.tokens)
    assert torch.equal(torch.cat([p.pos for p, _ in pieces]), packed.pos)
    ids = torch.cat([p.sample_id + s.first_sample for p, s in pieces])
    assert torch.equal(ids, packed.sample_id)
    for s in range(packed.num_samples):  # each sample's kept tokens and text, reassembled from the pieces
        keep = [p.keep[s - sh.first_sample] for p, sh in pieces if sh.first_sample <= s < sh.first_sample
                + p.num_samples]
        assert torch.equal(torch.cat(keep), packed.keep[s])
        for p, sh in pieces:
            if sh.first_sample <= s < sh.first_sample + p.num_samples:
                j = s - sh.first_sample
                local_text = p.text[p.text_cu_seqlens[j] : p.text_cu_seqlens[j + 1]]
                row_text = packed.text[packed.text_cu_seqlens[s] : packed.text_cu_seqlens[s + 1]]
                assert torch.equal(local_text, row_text)
                assert p.grids[j] == packed.grids[s]
    for p, _ in pieces:
        assert p.cu_seqlens[-1] == p.tokens.shape[0] and p.max_seqlen == max(p.seqlens)


def test_parallel_config_rejects_zero():
    with pytest.raises(ValueError, match="parallel.sequence must be >= 1, got 0"):
        ParallelConfig(sequence=0)
