import random

import pytest

from videodit.balanced_packing import check_fits, plan_balanced_steps, straggler_ratio
from videodit.cost_model import cost_model
from videodit.model import DiTConfig
from videodit.packing import plan_rows

COST = cost_model(DiTConfig(hidden_size=256, depth=4, num_heads=4))


def mixed_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts from 16 to 2048, log-uniform: many short clips and images, a few long clips."""
    rng = random.Random(seed)
    return [round(2 ** rng.uniform(4, 11)) for _ in range(n)]


def imbalance(step_costs: list[float]) -> float:
    return max(step_costs) / (sum(step_costs) / len(step_costs))


@pytest.mark.parametrize("ranks", [2, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_steps_balanced_within_5_percent(ranks, seed):
    lengths = mixed_lengths(64 * ranks, seed)
    costs = [COST.sample_flops(n) for n in lengths]
    plan = plan_balanced_steps(lengths, costs, ranks, rank_tokens=4096)
    planned = sorted(i for step in plan.steps for row in step for i in row)
    assert sorted(planned + plan.leftover) == list(range(len(lengths)))  # each sample exactly once
    assert len(plan.leftover) == 0
    assert all(len(step) == ranks and all(step) for step in plan.steps)
    assert all(sum(lengths[i] for i in row) <= 4096 for step in plan.steps for row in step)
    for step in plan.row_costs(costs):
        assert imbalance(step) <= 1.05


def test_token_count_rows_are_not_balanced_by_cost():
    """The baseline the cost planner replaces: rows filled to the token budget on each rank (the loader's
    plan_rows) and the ranks' i-th rows trained together."""
    ranks, lengths = 4, mixed_lengths(256)
    costs = [COST.sample_flops(n) for n in lengths]
    per_rank = [plan_rows([lengths[i] for i in range(r, len(lengths), ranks)], 4096) for r in range(ranks)]
    mine = [list(range(r, len(lengths), ranks)) for r in range(ranks)]
    steps = min(len(p) for p in per_rank)
    token_steps = [[sum(costs[mine[r][j]] for j in per_rank[r][k]) for r in range(ranks)]
                   for k in range(steps)]
    balanced = plan_balanced_steps(lengths, costs, ranks, 4096).row_costs(costs)
    assert max(imbalance(s) for s in token_steps) > 1.2
    assert max(imbalance(s) for s in balanced) < max(imbalance(s) for s in token_steps)


def test_few_samples_leave_no_rank_without_a_row():
    lengths = [1000, 900, 800]  # three samples, two ranks, each needs a row of its own
    plan = plan_balanced_steps(lengths, [COST.sample_flops(n) for n in lengths], ranks=2, rank_tokens=1000)
    assert all(all(step) for step in plan.steps)
    assert len(plan.steps) == 1 and len(plan.leftover) == 1  # the third comes back for the next window


def test_plan_is_deterministic():
    lengths = mixed_lengths(100)
    costs = [COST.sample_flops(n) for n in lengths]
    assert plan_balanced_steps(lengths, costs, 4, 4096) == plan_balanced_steps(lengths, costs, 4, 4096)


def test_sample_longer_than_a_rank_needs_sequence_parallelism():
    lengths = [300, 1500, 200]
    costs = [COST.sample_flops(n) for n in lengths]
    with pytest.raises(ValueError, match=r"sample 1 has 1500 tokens, .*parallel.sequence=2 or more"):
        plan_balanced_steps(lengths, costs, ranks=1, rank_tokens=1024)
    plan = plan_balanced_steps(lengths, costs, ranks=1, rank_tokens=1024, sequence=2)
    assert sorted(i for step in plan.steps for row in step for i in row) == [0, 1, 2]
    assert check_fits(lengths, 1024, 2) == 2048


def test_straggler_ratio():
    assert straggler_ratio([[1.0, 1.0], [2.0, 2.0]]) == 1.0
    assert straggler_ratio([[1.0, 3.0]]) == 1.5
    with pytest.raises(ValueError, match="at least one step"):
        straggler_ratio([])
