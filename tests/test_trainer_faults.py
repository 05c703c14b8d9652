"""videodit.trainer under faults, on a toy task (the save, resume and refusal code both trainers share):
a crash at every file operation of a save, crafted pickles in a checkpoint, a folder that holds another
run, a loss that is never finite."""

import json
import os
import pickle
import shutil

import pytest
import torch
from faults import every_phase

from videodit import trainer
from videodit.distributed import DeepSpeedConfig


@pytest.fixture(autouse=True)
def one_rank(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)


class ToyTask:
    """Fit y = sum(x) with a linear map; its state is the count of micro-steps served."""

    def __init__(self, nan: bool = False):
        self.served, self.nan = 0, nan

    def init_from(self, model, folder):
        pass

    def loss(self, model, step, generator):
        self.served += 1
        x = torch.randn(8, 4, generator=generator)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        return loss * float("nan") if self.nan else loss, {"served": float(self.served)}

    def after_step(self, step, weights):
        pass

    def log_fields(self, seconds):
        return {}

    def samples(self):
        return [f"toy-{self.served}"]

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]

    def export(self, weights, folder):  # one file, written atomically (temporary name, then os.replace)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(weights, folder / ".weights.pt.tmp")
        os.replace(folder / ".weights.pt.tmp", folder / "weights.pt")


def run(out, task=None, **kw):
    cfg = trainer.TrainConfig(output_dir=str(out), **{"max_steps": 3, "warmup_steps": 0, "lr": 0.05,
                                                       "log_every": 1, "save_every": 1, "ema_decay": 0.5,
                                                       **kw})
    ds = DeepSpeedConfig(zero_stage=0)
    session = trainer.start(cfg, ds)
    torch.manual_seed(0)
    return trainer.train(task or ToyTask(), torch.nn.Linear(4, 1), cfg, ds, session, {"toy": True},
                         export_name="model")


def metric_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_crash_at_every_step_of_a_save_resumes_to_the_same_weights(tmp_path):
    """Run to step 2, then crash at each file operation of step 3's save in turn; each time the exported
    model still loads, and the next run ends exactly where an uninterrupted run does, with every step
    logged once."""
    full = run(tmp_path / "full")
    run(tmp_path / "start", stop_step=2)
    work = tmp_path / "work"
    phases = []

    def fresh():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(tmp_path / "start", work, symlinks=True)

    fresh()
    for _, what in every_phase(lambda: run(work), work):
        phases.append(what)
        assert set(torch.load(work / "model" / "weights.pt")) == {"weight", "bias"}  # the export survives
        result = run(work)  # resumes from the last complete checkpoint
        assert result.step == 3, what
        exported = torch.load(work / "model" / "weights.pt")
        for k, v in full.weights.items():
            torch.testing.assert_close(result.weights[k], v, rtol=0, atol=0, msg=what)
            torch.testing.assert_close(exported[k], v, rtol=0, atol=0, msg=what)  # refreshed if it lagged
        assert metric_steps(work) == [1, 2, 3], what
        assert (work / "checkpoints" / "latest").read_text() == "step00000003"
        fresh()
    assert len(phases) >= 10, phases


def test_metrics_has_each_step_once_after_a_resume(tmp_path):
    run(tmp_path, stop_step=2, save_every=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # logged after the checkpoint, then killed
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    run(tmp_path, save_every=2)
    assert metric_steps(tmp_path) == [1, 2, 3]


def test_a_new_run_into_a_folder_that_holds_a_run_is_refused_unless_overwrite(tmp_path):
    first = run(tmp_path, stop_step=1)
    with pytest.raises(ValueError, match=rf"{tmp_path}.*already holds a run.*train.resume is false"):
        run(tmp_path, resume=False)
    exported = torch.load(tmp_path / "model" / "weights.pt")
    assert torch.equal(exported["weight"], first.weights["weight"]) and metric_steps(tmp_path) == [1]
    result = run(tmp_path, resume=False, overwrite=True, max_steps=2, lr=0.01)
    assert [r["step"] for r in result.records] == [1, 2] and metric_steps(tmp_path) == [1, 2]
    exported = torch.load(tmp_path / "model" / "weights.pt")
    assert torch.equal(exported["weight"], result.weights["weight"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["exported", "latest",
                                                                             "step00000001", "step00000002"]


def test_a_run_killed_before_its_first_checkpoint_is_not_silently_restarted(tmp_path):
    run(tmp_path, stop_step=2, save_every=2)
    shutil.rmtree(tmp_path / "checkpoints" / "step00000002")
    (tmp_path / "checkpoints" / "latest").unlink()
    (tmp_path / "checkpoints" / ".step00000002.tmp").mkdir()  # what an interrupted first save leaves
    with pytest.raises(ValueError, match=r"no complete checkpoint to resume \(interrupted: \.step00000002"):
        run(tmp_path)


class Payload:
    """Unpickling this runs a shell command (it writes `marker`)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def crafted_pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"served": Payload(marker)}, f)


@pytest.mark.parametrize("name", ["extra_rank00000.pt", "ema_state.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_never_run(tmp_path, name):
    run(tmp_path / "run", stop_step=1)
    marker = tmp_path / "pwned"
    crafted_pickle(tmp_path / "run" / "checkpoints" / "step00000001" / name, marker)
    with pytest.raises(Exception) as refused:
        run(tmp_path / "run")
    assert not marker.exists()  # the payload did not run
    assert "is not a checkpoint file this trainer wrote" in str(refused.value)


def test_a_loss_that_is_never_finite_stops_the_run_naming_the_step_and_samples(tmp_path, monkeypatch):
    """A loss that is NaN at every step stops the run after train.max_nonfinite (default 20) micro-steps
    instead of skipping forever; the test gives up (fails) after 200 micro-steps instead of hanging."""
    task = ToyTask(nan=True)
    real = task.loss

    def bounded(*args):
        assert task.served < 200, "still skipping non-finite losses after 200 micro-steps"
        return real(*args)

    monkeypatch.setattr(task, "loss", bounded)
    with pytest.raises(RuntimeError, match=r"20 consecutive .* in step 1 on samples \[toy-20\]"):
        run(tmp_path, task=task)
    assert task.served == 20


def test_max_nonfinite_is_configurable_and_a_finite_step_resets_the_count(tmp_path):
    calls = {"n": 0}

    class Flaky(ToyTask):
        def loss(self, model, step, generator):
            loss, logs = super().loss(model, step, generator)
            calls["n"] += 1
            return (loss * float("nan") if calls["n"] % 3 else loss), logs  # 2 bad, 1 good, ...

    result = run(tmp_path / "a", task=Flaky(), max_nonfinite=3)
    assert result.step == 3 and result.records[-1]["nan_skips"] == 6
    with pytest.raises(RuntimeError, match="2 consecutive"):
        run(tmp_path / "b", task=Flaky(), max_nonfinite=2)
    with pytest.raises(ValueError, match="max_nonfinite"):
        trainer.TrainConfig(max_nonfinite=0)
