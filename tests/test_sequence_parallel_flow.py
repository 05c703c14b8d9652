"""flow_loss under sequence parallelism (2 gloo ranks spawned here) against the single-rank flow_loss:
the same loss, per-sample losses and summed gradients, with conditioning frames and token dropping."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videodit.flow import FlowConfig, flow_loss
from videodit.model import DiTConfig, VideoDiT
from videodit.sequence_parallel import ParallelGroups, sum_gradients

TEXT_DIM = 12


def model() -> VideoDiT:
    torch.manual_seed(0)
    net = VideoDiT(DiTConfig(in_channels=4, text_dim=TEXT_DIM, hidden_size=32, depth=2, num_heads=2,
                             attention="sdpa"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the zero init, so every gradient is non-trivial
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def data(conditioned: bool):
    g = torch.Generator().manual_seed(2)
    shapes = [(3, 6, 8), (1, 4, 6), (2, 4, 4), (3, 2, 4)]
    latents = [torch.randn(4, *s, generator=g) for s in shapes]
    texts = [torch.randn(n, TEXT_DIM, generator=g) for n in (5, 3, 2, 4)]
    cond = None
    if conditioned:  # sample 0 keeps its first latent frame, sample 3 its first two
        cond = [torch.zeros(s[0], dtype=torch.bool) for s in shapes]
        cond[0][0], cond[3][:2] = True, True
    return latents, texts, cond


CASES = {"plain": (False, 0.0), "conditioned": (True, 0.0), "token_drop": (True, 0.3)}


def run(case: str, parallel: ParallelGroups | None):
    conditioned, drop = CASES[case]
    net = model()
    latents, texts, cond = data(conditioned)
    cfg = FlowConfig(text_drop_prob=0.3)
    loss, per_sample = flow_loss(net, latents, texts, cfg, torch.Generator().manual_seed(3), drop,
                                 cond_frames=cond, parallel=parallel)
    loss.backward()
    if parallel is not None:
        sum_gradients(net, parallel.sequence_group)
    return loss.detach(), per_sample.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        groups = ParallelGroups(None, rank, 2, None, 0, 1)
        torch.save({case: run(case, groups) for case in CASES}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sp_flow")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=2)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_flow_loss_at_sp2_matches_one_rank(two_ranks, case):
    loss, per_sample, grads = run(case, None)
    for result in two_ranks:
        r_loss, r_per_sample, r_grads = result[case]
        assert abs(float(r_loss) - float(loss)) <= 1e-5
        torch.testing.assert_close(r_per_sample, per_sample, rtol=0, atol=1e-5)
        for name, g in grads.items():
            assert (r_grads[name] - g).abs().max() <= 1e-5, name


def test_pixel_term_refused_under_sequence_parallelism():
    groups = ParallelGroups(None, 0, 2, None, 0, 1)
    latents, texts, _ = data(False)
    with pytest.raises(ValueError, match="pixel_weight > 0 needs whole samples.*parallel.sequence=2"):
        flow_loss(model(), latents, texts, FlowConfig(pixel_weight=1.0), torch.Generator().manual_seed(0),
                  pixel_decoder=lambda z: z, parallel=groups)
