"""Cost-balanced loader: at every step the ranks' rows cost the same, each epoch serves every sample once,
resume continues exactly, and a sample over a row's budget names sequence parallelism."""

import itertools

import pytest
from test_loader import FakeSource, ids

from data.balanced_loader import CostBalancedLoader


def cost(n: int) -> float:
    return n + n * n / 4  # attention-like: quadratic in the sample's tokens


class LongFakeSource(FakeSource):
    """FakeSource lengths times 4 (4..52 tokens), every 5th unreadable."""

    def token_length(self, i):
        n = super().token_length(i)
        return None if n is None else 4 * n


def loaders(world, n=640, **kw):
    return [CostBalancedLoader(LongFakeSource(n), rank_tokens=160, cost=cost, seed=1, rank=r,
                               world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_step_rows_cost_the_same_and_cover_the_epoch(world):
    ranks = loaders(world)
    streams = [iter(loader) for loader in ranks]
    steps = []
    while not steps or steps[-1][0][0]["epoch"] == 0:  # one epoch, and the first step of the next
        steps.append([next(s) for s in streams])
    for step in steps:
        assert len({row[0]["epoch"] for row in step}) == 1  # the ranks stay in step
        costs = [sum(cost(s["tokens"]) for s in row) for row in step]
        assert all(sum(s["tokens"] for s in row) <= 160 for row in step)
        assert max(costs) / (sum(costs) / world) <= 1.05
    served = [s["index"] for step in steps[:-1] for row in step for s in row]
    readable = [i for i in range(640) if i % 5 != 4]
    assert sorted(served) == readable  # every readable sample once (no window here leaves one over)
    assert "unbalanced" not in ranks[0].source.stats


def test_position_restore_continues_exactly():
    full = ids(itertools.islice(iter(loaders(2)[1]), 30))
    first = loaders(2)[1]
    it = iter(first)
    head = ids([next(it) for _ in range(11)])
    second = loaders(2)[1]
    second.load_state_dict(first.state_dict())
    assert head + ids(itertools.islice(iter(second), 19)) == full


def test_sample_over_the_row_budget_names_sequence_parallelism():
    loader = CostBalancedLoader(LongFakeSource(40), rank_tokens=40, cost=cost, world_size=1)
    with pytest.raises(ValueError, match=r"has 52 tokens.*parallel.sequence=2 or more"):
        next(iter(loader))
    rows = list(itertools.islice(iter(CostBalancedLoader(LongFakeSource(40), rank_tokens=40, cost=cost,
                                                         sequence=2)), 5))
    assert all(sum(s["tokens"] for s in row) <= 80 for row in rows)
