"""videodit.trainer on a toy task: exact resume, atomic checkpoints, pruning, the lr schedule, EMA."""

import json

import pytest
import torch

from videodit import trainer
from videodit.distributed import DeepSpeedConfig


@pytest.fixture(autouse=True)
def one_rank(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


class ToyTask:
    """Fit y = sum(x) with a linear map; counts the micro-steps it served (its checkpointed state)."""

    def __init__(self):
        self.served = 0

    def init_from(self, model, folder):
        trainer.load_matching(model, torch.load(f"{folder}/weights.pt"), set(), folder)

    def loss(self, model, step, generator):
        self.served += 1
        x = torch.randn(8, 4, generator=generator)
        return (model(x) - x.sum(1, keepdim=True)).pow(2).mean(), {"served": float(self.served)}

    def after_step(self, step, weights):
        pass

    def log_fields(self, seconds):
        return {}

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]

    def export(self, weights, folder):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(weights, folder / "weights.pt")


def run(out, **kw):
    cfg = trainer.TrainConfig(output_dir=str(out), **{"max_steps": 4, "warmup_steps": 0, "lr": 0.05,
                                                       "log_every": 1, "save_every": 1, **kw})
    ds = DeepSpeedConfig(zero_stage=0)
    session = trainer.start(cfg, ds)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    return trainer.train(ToyTask(), model, cfg, ds, session, {"toy": True}, export_name="model")


def test_a_stopped_and_resumed_run_ends_where_an_unstopped_one_does(tmp_path):
    full = run(tmp_path / "full", ema_decay=0.5)
    first = run(tmp_path / "split", ema_decay=0.5, stop_step=2)
    assert [r["step"] for r in first.records] == [1, 2] and first.step == 2
    second = run(tmp_path / "split", ema_decay=0.5)
    assert [r["step"] for r in second.records] == [3, 4]
    assert second.records[-1]["served"] == 4  # the task's state came back
    for k, v in full.weights.items():  # EMA weights, exported
        torch.testing.assert_close(second.weights[k], v, rtol=0, atol=0)
    exported = torch.load(tmp_path / "split" / "model" / "weights.pt")
    torch.testing.assert_close(exported["weight"], full.weights["weight"], rtol=0, atol=0)
    assert json.loads((tmp_path / "split" / "config.json").read_text()) == {"toy": True}


def test_checkpoints_switch_latest_last_and_keep_the_newest(tmp_path):
    run(tmp_path, stop_step=2, keep_checkpoints=2)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text() == "step00000002"
    # what a save killed before `latest` leaves: a temporary folder, or a complete but unnamed one
    (root / ".step00000003.tmp").mkdir()
    (root / ".step00000003.tmp" / "partial").write_text("x")
    (root / "step00000003").mkdir()
    (root / "step00000003" / "stale").write_text("x")
    assert trainer.latest_checkpoint(tmp_path) == root / "step00000002"
    result = run(tmp_path, keep_checkpoints=2)
    assert [r["step"] for r in result.records] == [3, 4]  # resumed from step 2, not the stale step 3
    assert sorted(p.name for p in root.iterdir()) == ["exported", "latest", "step00000003", "step00000004"]
    assert not (root / "step00000003" / "stale").exists()
    assert (root / "step00000004" / "model" / "weights.pt").is_file()


def test_lr_follows_the_config_and_the_step_also_after_a_resume(tmp_path):
    sched = {"warmup_steps": 2, "decay_start": 2, "min_lr_ratio": 0.5}
    first = run(tmp_path, lr=0.01, stop_step=2, **sched)
    second = run(tmp_path, lr=0.02, **sched)  # a resumed run takes the config's lr
    cfg1 = trainer.TrainConfig(max_steps=4, lr=0.01, **sched)
    cfg2 = trainer.TrainConfig(max_steps=4, lr=0.02, **sched)
    expected = [c.lr * trainer.lr_factor(s, c) for c, s in zip((cfg1, cfg1, cfg2, cfg2), (1, 2, 3, 4))]
    assert [r["lr"] for r in first.records + second.records] == pytest.approx(expected)


def test_init_from_loads_matching_weights_and_names_what_does_not_fit(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"weight": torch.full((1, 4), 0.25), "bias": torch.zeros(1)}, src / "weights.pt")
    result = run(tmp_path / "a", init_from=str(src), lr=1e-9)
    torch.testing.assert_close(result.weights["weight"], torch.full((1, 4), 0.25), atol=1e-6, rtol=0)
    torch.save({"weight": torch.zeros(2, 4), "bias": torch.zeros(1)}, src / "weights.pt")
    with pytest.raises(ValueError, match=r"does not fit the model: .*\['weight'\]"):
        run(tmp_path / "b", init_from=str(src))


def test_config_errors_name_the_field():
    for kw, match in (({"stop_step": 5}, "stop_step"), ({"decay_start": 4}, "decay_start"),
                      ({"ema_decay": 1.0}, "ema_decay"), ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
                      ({"keep_checkpoints": 0}, "keep_checkpoints")):
        with pytest.raises(ValueError, match=match):
            trainer.TrainConfig(max_steps=4, **kw)
