"""bench.parallel on a tiny model, 2 spawned gloo ranks: the summary line; SP=2 halves the step memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 10 s: two spawned ranks, each importing torch
def test_tiny_run_reports_the_four_figures():
    cmd = [sys.executable, "-m", "bench.parallel", "--hidden", "64", "--depth", "2", "--heads", "4",
           "--long-tokens", "1024", "--samples", "12", "--scale", "0.5", "--row-tokens", "1024"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert set(summary) >= {"peak_mem_ratio_sp2_vs_sp1", "alltoall_share", "straggler_ratio_cost",
                            "straggler_ratio_tokens"}
    assert summary["activation_share"] > 0.5  # the long sample is sized so activations dominate
    assert summary["peak_mem_ratio_sp2_vs_sp1"] < 0.75  # each rank keeps about half the activations
    assert 0 < summary["alltoall_share"] < 1
    assert summary["straggler_ratio_cost"] >= 1 and summary["straggler_ratio_tokens"] >= 1
