import torch

from bench.memory import peak_rss


def test_peak_rss_sees_a_freed_allocation_and_returns_the_result():
    def work():
        x = torch.ones(32, 1024, 1024)  # 128 MiB, freed before the call returns
        return float(x.sum())

    seconds, peak_mb, out = peak_rss(work)
    assert out == 32 * 1024 * 1024
    assert seconds > 0
    assert 100 < peak_mb < 1024
