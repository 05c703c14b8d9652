"""SP=2 under a DeepSpeed engine (2 CPU ranks, gloo): one SGD step equals the 1-rank step at ZeRO 0, 2, 3."""

import os
import socket

import pytest
import test_sequence_parallel as sp_test
import torch
import torch.multiprocessing as mp

from videodit.sequence_parallel import forward_shard, sample_means, scaled_for_mean_reducer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, stages: list[int], out_dir: str) -> None:
    import deepspeed

    from videodit.distributed import DeepSpeedConfig, deepspeed_config, gathered, init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    init_distributed()
    results = {}
    for stage in stages:
        model, packed, t, target, weights = sp_test.scenario("mixed")
        opt = torch.optim.SGD(model.parameters(), lr=sp_test.LR)
        config = deepspeed_config(DeepSpeedConfig(zero_stage=stage, grad_clip=0.0), world_size=2)
        if stage:  # small buckets: ZeRO reduces mid-backward, between the all-to-alls of the blocks
            config["zero_optimization"]["reduce_bucket_size"] = 2000
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        out, local, shard = forward_shard(engine, packed, t, rank, 2)  # the engine's forward, its hooks run
        err = (out - target[shard.start : shard.end]).pow(2).mean(dim=1)
        loss = (sample_means(err, local, shard) * weights).sum()
        engine.backward(scaled_for_mean_reducer(loss, 2))  # DeepSpeed averages over both ranks
        engine.step()
        with gathered(engine.module, stage):
            results[stage] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow  # about 30 s: DeepSpeed's import and three engines on two ranks
def test_deepspeed_sgd_step_matches_one_rank(tmp_path):
    stages = [0, 2, 3]
    mp.spawn(_worker, args=(_free_port(), stages, str(tmp_path)), nprocs=2)
    _, _, _, params = sp_test.reference("mixed")
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for stage in stages:
            for name, p in params.items():
                assert (results[stage][name] - p).abs().max() <= 1e-5, (stage, name)
