"""Ulysses sequence parallelism: 2 CPU ranks (gloo, spawned here) against the single-rank model."""

import functools
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videodit.balanced_packing import plan_balanced_steps
from videodit.cost_model import cost_model
from videodit.flow import per_sample_mean
from videodit.model import DiTConfig, VideoDiT
from videodit.packing import num_tokens, pack
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


RANK_TOKENS = 40  # one rank's row budget in the oversize scenario


def perturbed_model(grad_checkpointing: bool = False) -> VideoDiT:
    """A tiny fp32 model moved off its (partly zero) init, so every gradient is non-trivial."""
    torch.manual_seed(0)
    model = VideoDiT(DiTConfig(in_channels=4, text_dim=TEXT_DIM, hidden_size=48, depth=2, num_heads=4,
                               rope="fractional", attention="sdpa", grad_checkpointing=grad_checkpointing))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def oversize_row(shapes) -> list[int]:
    """The samples planned into one row with the 60-token sample 0, at SP=2 with RANK_TOKENS per rank."""
    lengths = [num_tokens(s, (1, 2, 2)) for s in shapes]
    costs = [cost_model(perturbed_model().config, "fp32").sample_flops(n) for n in lengths]
    plan = plan_balanced_steps(lengths, costs, ranks=1, rank_tokens=RANK_TOKENS, sequence=2)
    return next(row for step in plan.steps for row in step if 0 in row)


OVERSIZE_SHAPES = [(3, 8, 10), (1, 5, 7), (2, 4, 4), (1, 4, 4)]  # 60 + 12 + 8 + 4 tokens


def scenario(kind: str = "mixed", grad_checkpointing: bool = False):
    """-> model, row, row timesteps, per-token targets, per-sample loss weights.

    "mixed": 5 mixed shapes, 63 tokens (the two ranks hold 32 and 31, the first sample straddles them).
    "oversize": a row holding a 60-token sample, more than one rank's budget of RANK_TOKENS."""
    model = perturbed_model(grad_checkpointing)
    g = torch.Generator().manual_seed(2)
    if kind == "mixed":
        shapes = [(3, 6, 8), (1, 5, 7), (2, 4, 4), (1, 4, 4), (1, 2, 6)]  # 36 + 12 + 8 + 4 + 3 tokens
    else:
        shapes = [OVERSIZE_SHAPES[i] for i in oversize_row(OVERSIZE_SHAPES)]
    latents = [torch.randn(4, *s, generator=g) for s in shapes]
    texts = [torch.randn(n, TEXT_DIM, generator=g) for n in (5, 0, 3, 2, 4)[: len(shapes)]]
    packed = pack(latents, texts, model.config.patch)
    t = torch.rand(len(shapes), generator=g)
    target = torch.randn(packed.tokens.shape, generator=g)  # (N, D_in)
    weights = torch.rand(len(shapes), generator=g) + 0.5  # (S,) unequal, so per-sample sums must be right
    return model, packed, t, target, weights


@functools.cache
def reference(kind: str = "mixed"):
    """Single-rank forward, loss, gradients and parameters after one SGD step."""
    model, packed, t, target, weights = scenario(kind)
    out = model.forward_packed(packed, t)  # (N, D_in)
    err = (out - target).pow(2).mean(dim=1)  # (N,)
    loss = (per_sample_mean(err, packed.sample_id, packed.num_samples) * weights).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return out.detach(), loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def sp_step(kind: str, rank: int, size: int, grad_checkpointing: bool = False) -> dict:
    """This rank's part of the SP forward, loss, gradients (own and summed) and one SGD step."""
    model, packed, t, target, weights = scenario(kind, grad_checkpointing)
    out, local, shard = forward_shard(model, packed, t, rank, size)
    err = (out - target[shard.start : shard.end]).pow(2).mean(dim=1)  # (n_r,)
    loss = (sample_means(err, local, shard) * weights).sum()
    loss.backward()
    own = {n: p.grad.clone() for n, p in model.named_parameters()}  # this rank's part only
    sum_gradients(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=LR).step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return dict(out=gather_row(out.detach(), shard), loss=loss.detach(), own=own, grads=grads, params=params,
                tokens=out.shape[0])


def _worker(rank: int, size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        result = {
            "mixed": sp_step("mixed", rank, size),
            # each block recomputed in backward: the recompute repeats the all-to-alls
            "recomputed": sp_step("mixed", rank, size, grad_checkpointing=True),
            "oversize": sp_step("oversize", rank, size),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results of every scenario, from one spawn of 2 gloo ranks."""
    folder = tmp_path_factory.mktemp("sp2")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder)), nprocs=2)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def test_sp2_forward_and_loss_match_one_rank(two_ranks):
    out, loss, _, _ = reference()
    assert [r["mixed"]["tokens"] for r in two_ranks] == [32, 31]  # uneven split, a sample straddles ranks
    for r in (r["mixed"] for r in two_ranks):
        assert (r["out"] - out).abs().max() <= 1e-5
        assert abs(float(r["loss"]) - float(loss)) <= 1e-5


@pytest.mark.parametrize("run", ["mixed", "recomputed"])
def test_sp2_all_gradients_match_one_rank(two_ranks, run):
    _, _, grads, _ = reference()
    for r in (r[run] for r in two_ranks):
        assert set(r["grads"]) == set(grads)
        for name, g in grads.items():
            assert g.abs().max() > 0, name  # every parameter takes part
            assert (r["grads"][name] - g).abs().max() <= 1e-5, name
    # each rank alone holds only part of the gradient: the sum over ranks is what matches
    assert max((two_ranks[0][run]["own"][n] - g).abs().max() for n, g in grads.items()) > 1e-3


def test_sp2_sgd_step_matches_one_rank(two_ranks):
    _, _, _, params = reference()
    for r in (r["mixed"] for r in two_ranks):
        for name, p in params.items():
            assert (r["params"][name] - p).abs().max() <= 1e-5, name


def test_sample_over_one_ranks_budget_trains_at_sp2(two_ranks):
    """A 60-token sample against 40 tokens per rank: each rank holds at most 40 of the row, and the
    step equals the 1-rank step on the whole row."""
    assert 0 in oversize_row(OVERSIZE_SHAPES)
    out, loss, grads, params = reference("oversize")
    assert out.shape[0] > RANK_TOKENS
    for r in (r["oversize"] for r in two_ranks):
        assert r["tokens"] <= RANK_TOKENS
        assert (r["out"] - out).abs().max() <= 1e-5 and abs(float(r["loss"]) - float(loss)) <= 1e-5
        for name in grads:
            assert (r["grads"][name] - grads[name]).abs().max() <= 1e-5, name
            assert (r["params"][name] - params[name]).abs().max() <= 1e-5, name


def test_sample_over_one_ranks_budget_refused_at_sp1():
    lengths = [num_tokens(s, (1, 2, 2)) for s in OVERSIZE_SHAPES]
    message = r"sample 0 has 60 tokens.*with sequence parallelism: parallel.sequence=2"
    with pytest.raises(ValueError, match=message):
        plan_balanced_steps(lengths, [float(n) for n in lengths], ranks=1, rank_tokens=RANK_TOKENS)


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
