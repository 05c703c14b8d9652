"""train_video.py with sequence parallelism: `parallel.sequence=2` under the DeepSpeed launcher (2 CPU
ranks) trains on rows holding samples larger than one rank's budget, with the 1-rank run's per-step loss."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_data_fixtures import make_dataset, tiny_vae

import train_video
from data.dataset import VideoDataset
from data.sampling import SamplingConfig
from videodit.model import DiTConfig

REPO = Path(__file__).resolve().parents[1]
STEPS = 5
RANK_TOKENS = 16  # one rank's budget at SP=2; the 1-rank run has rows of 2 x 16, the same rows


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_sp")
    return {"manifest": make_dataset(root / "clips", num_clips=6), "vae": tiny_vae(root / "vae")}


def overrides(assets, out, **extra) -> list[str]:
    sets = {"data.manifest": assets["manifest"], "data.vae": assets["vae"], "model.in_channels": 4,
            "train.output_dir": out, "train.save_every": 0, "train.max_steps": STEPS,
            "data.max_tokens": 2 * RANK_TOKENS, "train.peak_tflops": 0.1, **extra}
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def launch(assets, out, ranks: int, port: int, **extra) -> list[dict]:
    if shutil.which("deepspeed") is None:
        pytest.skip("deepspeed launcher not on PATH")
    cmd = ["deepspeed", "--num_accelerators", str(ranks), "--master_port", str(port), "train_video.py",
           "--config", "configs/debug.yaml", *overrides(assets, out, **extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return metrics(out)


@pytest.fixture
def one_rank(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


def sample_tokens(assets) -> list[int]:
    """Token counts of the run's clips in its first epoch (the resolution sampling of build_data)."""
    cfg = train_video.RunConfig(model=DiTConfig(in_channels=4))
    sampling = SamplingConfig(temporal_stride=4, spatial_stride=8, patch=cfg.model.patch, min_tokens=8,
                              max_tokens=2 * RANK_TOKENS, max_frames=9)
    source = VideoDataset(str(assets["manifest"]), sampling, seed=0)
    return [source.token_length(i) for i in range(len(source))]


def test_sp2_trains_past_one_ranks_budget_with_the_one_rank_loss(tmp_path, assets, one_rank):
    assert max(sample_tokens(assets)) > RANK_TOKENS  # some samples do not fit one rank's share of a row
    sp2 = launch(assets, tmp_path / "sp2", ranks=2, port=29710,
                 **{"parallel.sequence": 2, "data.row_tokens": RANK_TOKENS})
    train_video.main(["--config", str(REPO / "configs/debug.yaml"),
                      *overrides(assets, tmp_path / "one", **{"data.row_tokens": 2 * RANK_TOKENS})])
    one = metrics(tmp_path / "one")
    assert [m["step"] for m in sp2] == [m["step"] for m in one] == list(range(1, STEPS + 1))
    for a, b in zip(sp2, one):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a["step"], a["loss"], b["loss"])
        assert a["packing_efficiency"] == pytest.approx(b["packing_efficiency"])
        assert 0 < a["packing_efficiency"] <= 1 and a["tokens_per_s"] > 0 and a["mfu"] > 0
    assert len({round(m["loss"], 6) for m in one}) == STEPS  # the steps differ: not one loss repeated
    log = (tmp_path / "sp2" / "train.log").read_text()
    assert "sequence parallelism: 1 rows of 2 ranks, 32 tokens per row" in log


def test_sample_over_one_ranks_budget_refused_at_sp1(tmp_path, assets, one_rank):
    with pytest.raises(ValueError, match=r"sequence parallelism: parallel.sequence=2 or more"):
        train_video.main(["--config", str(REPO / "configs/debug.yaml"),
                          *overrides(assets, tmp_path / "refused", **{"data.row_tokens": RANK_TOKENS})])


def test_memory_budget_derives_the_row_budget():
    from videodit.cost_model import cost_model, row_tokens_for_memory
    from videodit.model import VideoDiT
    from videodit.sequence_parallel import ParallelGroups

    ds = train_video.DeepSpeedConfig(precision="bf16", zero_stage=2)
    cfg = train_video.RunConfig(model=DiTConfig(in_channels=4, hidden_size=64, depth=2, num_heads=2),
                                train=train_video.VideoTrainConfig(memory_budget_gb=0.05),
                                data=train_video.DataConfig(max_tokens=256), deepspeed=ds)
    model, cost = VideoDiT(cfg.model), cost_model(cfg.model, "bf16")
    params = sum(p.numel() for p in model.parameters())
    one = train_video.rank_row_tokens(cfg, model, cost, ParallelGroups(None, 0, 1, None, 0, 1))
    assert one == row_tokens_for_memory(0.05, cost, params, "bf16", 2, 1, 1) and one > 256
    assert abs(one * cost.activation_bytes - 0.8 * 0.05 * 2**30) < 0.1 * 0.05 * 2**30  # state is small here
    two = train_video.rank_row_tokens(cfg, model, cost, ParallelGroups(None, 1, 2, None, 0, 1))
    assert two >= one  # each rank of an SP pair holds its share; the model state is split over both
    cfg.train.memory_budget_gb = 0.0055  # covers the model state, but not a 256-token clip on one rank
    with pytest.raises(ValueError, match=r"max_tokens \(256\) must be <= .*parallel.sequence=\d+ or more"):
        train_video.rank_row_tokens(cfg, model, cost, ParallelGroups(None, 0, 1, None, 0, 1))
    pair = train_video.rank_row_tokens(cfg, model, cost, ParallelGroups(None, 0, 2, None, 0, 1))
    assert pair < 256 <= 2 * pair  # the clip fits a row of two ranks, not one rank's share


@pytest.mark.slow  # about 45 s: two launcher processes and a 1-rank run
def test_two_node_launch_without_ssh_trains_like_one_rank(tmp_path, assets, one_rank):
    """The multi-node path on one machine: a hostfile of two one-slot nodes, one `deepspeed --no_ssh
    --node_rank K` launch per node, rank 0's address as master; the row is split across the two nodes
    (parallel.sequence=2) and checkpoints go to one shared folder."""
    if shutil.which("deepspeed") is None:
        pytest.skip("deepspeed launcher not on PATH")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    out = tmp_path / "two_nodes"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = ["train_video.py", "--config", "configs/debug.yaml",
            *overrides(assets, out, **{"parallel.sequence": 2, "data.row_tokens": RANK_TOKENS})]
    launch = ["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--master_addr", "127.0.0.1",
              "--master_port", "29740"]
    nodes = [subprocess.Popen([*launch, "--node_rank", str(k), *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in (0, 1)]
    logs = [p.communicate(timeout=400)[0] for p in nodes]
    for k, (p, log) in enumerate(zip(nodes, logs)):
        assert p.returncode == 0, log[-3000:]
        assert f"nnodes=2, num_local_procs=1, node_rank={k}" in log
    train_video.main(["--config", str(REPO / "configs/debug.yaml"),
                      *overrides(assets, tmp_path / "one", **{"data.row_tokens": 2 * RANK_TOKENS})])
    two, one = metrics(out), metrics(tmp_path / "one")
    assert [m["step"] for m in two] == list(range(1, STEPS + 1))
    for a, b in zip(two, one):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a["step"], a["loss"], b["loss"])
    saved = out / "checkpoints" / f"step{STEPS:08d}"
    assert (saved / "extra_rank00000.pt").is_file() and (saved / "extra_rank00001.pt").is_file()
