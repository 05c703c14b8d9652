"""bench.serve: the stream it draws, static batching's replayed clock, and a run of all three arms on a tiny
checkpoint."""

import json

import numpy as np

from bench import serve


def test_the_stream_follows_the_mix_and_is_reproducible():
    items = serve.draw_stream(400, seed=3)
    assert [(i.frames, i.height, i.width) for i in items[:20]] == \
        [(i.frames, i.height, i.width) for i in serve.draw_stream(20, seed=3)]
    for weight, frames, (height, width), _ in serve.MIX:
        share = np.mean([(i.frames, i.height, i.width) == (frames, height, width) for i in items])
        assert abs(share - weight) < 0.08, (frames, share, weight)
    assert len({i.seed for i in items}) == 400


def test_static_batching_waits_batches_and_runs_to_completion(monkeypatch):
    """Each batch takes 1 s per request in it: arrivals at 0, 0.5 and 5 s with a 1 s window make a batch of
    two (0..1 s window, done at 3 s) and a batch of one (opens at 5, runs 6..7 s)."""
    batches = []

    def run_batch(pipe, items, settings, folder):
        batches.append([it.index for it in items])
        return [float(len(items))] * len(items)

    monkeypatch.setattr(serve, "run_batch", run_batch)
    items = serve.draw_stream(3, seed=0)
    finished, count = serve.static(None, items, np.array([0.0, 0.5, 5.0]), None, None, window=1.0)
    assert batches == [[0, 1], [2]] and count == 2
    assert finished.tolist() == [3.0, 3.0, 7.0]


def test_all_three_arms_run_on_a_tiny_checkpoint(tiny_dit_ckpt, capsys):
    argv = ["--num", "4", "--steps", "2", "--ckpt", str(tiny_dit_ckpt), "--static-window", "0.1"]
    result = serve.main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line.get("arm") for line in lines] == [None, "static", "continuous", "sequential", None]
    assert lines[-1] == result and result["throughput_ratio_vs_sequential"] > 0
    for line in lines[1:4]:
        assert line["videos"] == 4 and line["p95_latency_s"] >= line["p50_latency_s"] > 0, line
