"""bench.sdedit_shape on a tiny checkpoint: one record per strength, counts per prompted shape."""

import torch

from bench import sdedit_shape


def test_runs_on_a_tiny_checkpoint(tiny_dit_ckpt, capsys):
    ckpt = tiny_dit_ckpt
    argv = ["--dit", str(ckpt), "--num", "4", "--strengths", "0.5", "1.0", "--steps", "2"]
    records = sdedit_shape.main(argv)
    assert [r["strength"] for r in records] == [0.5, 1.0]
    for r in records:
        assert r["clips"] == 4 and 0 <= r["all_shape"] <= 100
        assert sum(int(v.split("/")[1]) for v in r["shape_right"].values()) == 4
    assert torch.is_grad_enabled()
    assert capsys.readouterr().out.count('"bench": "sdedit_shape"') == 2
