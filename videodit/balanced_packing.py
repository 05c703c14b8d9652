"""Packing by compute cost: rows of equal estimated training cost, one per data-parallel rank each step.

`videodit.packing.plan_rows` fills rows to a token budget. With attention quadratic in a sample's length,
two rows of the same token count can differ several-fold in compute (one long clip against many short
ones), and in data-parallel training every rank waits at the gradient all-reduce for the slowest row.
`plan_balanced_steps` instead plans a window of samples into steps of `ranks` rows:

1. K steps, K the fewest whose K * ranks rows can hold the window's tokens (the token budget stands for
   activation memory, which is linear in tokens: see videodit.cost_model);
2. longest-processing-time first: samples in decreasing cost each go to the row of least cost so far
   that still has token room; if one fits nowhere, K grows by one and the plan restarts;
3. the rows, sorted by cost, are dealt out in consecutive groups of `ranks`: one group per step.

Step 2 leaves every row within about one small sample's cost of the others, so each step's rows match
when the window has enough small samples to even out the large ones. A step that would leave a rank
without a row is not planned: its samples come back as `leftover`, to be planned with the next window.

A row of a sequence-parallel group holds `sequence` ranks' worth of tokens; a sample longer than that is
refused with the sequence-parallel size that would hold it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class BalancedPlan:
    steps: list[list[list[int]]]  # steps[k][rank] = sample indices of that rank's row at step k
    leftover: list[int]  # samples not planned (a step that would leave a rank without a row)

    def row_costs(self, costs: Sequence[float]) -> list[list[float]]:
        """steps[k][rank] -> the estimated cost of that row."""
        return [[sum(costs[i] for i in row) for row in step] for step in self.steps]


def check_fits(lengths: Sequence[int], rank_tokens: int, sequence: int = 1) -> int:
    """The token budget of one row, `rank_tokens` per rank times `sequence` ranks; ValueError naming the
    sequence-parallel size that would hold any sample longer than that."""
    if rank_tokens < 1 or sequence < 1:
        raise ValueError(f"rank_tokens and sequence must be >= 1, got {rank_tokens}, {sequence}")
    row = rank_tokens * sequence
    for i, n in enumerate(lengths):
        if n < 1:
            raise ValueError(f"sample {i} has {n} tokens; a sample needs at least one")
        if n > row:
            raise ValueError(
                f"sample {i} has {n} tokens, more than a row's budget of {row} tokens ({rank_tokens} per "
                f"rank x parallel.sequence={sequence}); split its rows across ranks with sequence "
                f"parallelism: parallel.sequence={math.ceil(n / rank_tokens)} or more"
            )
    return row


def _lpt(order: list[int], lengths: Sequence[int], costs: Sequence[float], bins: int,
         budget: int) -> list[list[int]] | None:
    """Samples in `order` (decreasing cost) each into the cheapest bin with token room; None if one does
    not fit anywhere."""
    rows: list[list[int]] = [[] for _ in range(bins)]
    load, room = [0.0] * bins, [budget] * bins
    for i in order:
        fitting = [b for b in range(bins) if room[b] >= lengths[i]]
        if not fitting:
            return None
        b = min(fitting, key=lambda b: (load[b], b))
        rows[b].append(i)
        load[b] += costs[i]
        room[b] -= lengths[i]
    return rows


def plan_balanced_steps(lengths: Sequence[int], costs: Sequence[float], ranks: int, rank_tokens: int,
                        sequence: int = 1) -> BalancedPlan:
    """Plan samples (token counts `lengths`, estimated costs `costs`, e.g. CostModel.sample_flops) into
    steps of `ranks` rows of equal cost, each row within `rank_tokens * sequence` tokens (module doc).
    Deterministic: every rank computes the same plan from the same window."""
    if len(costs) != len(lengths):
        raise ValueError(f"got {len(lengths)} lengths but {len(costs)} costs")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    budget = check_fits(lengths, rank_tokens, sequence)
    if not lengths:
        return BalancedPlan([], [])
    order = sorted(range(len(lengths)), key=lambda i: (-costs[i], -lengths[i], i))
    steps_needed = max(1, math.ceil(sum(lengths) / (ranks * budget)))
    while (rows := _lpt(order, lengths, costs, steps_needed * ranks, budget)) is None:
        steps_needed += 1  # ends: with a row per sample everything fits
    rows = [sorted(r) for r in rows]
    rows.sort(key=lambda r: (-sum(costs[i] for i in r), r))
    steps, leftover = [], []
    for k in range(0, len(rows), ranks):
        step = rows[k : k + ranks]
        if all(step):
            steps.append(step)
        else:
            leftover.extend(i for r in step for i in r)
    return BalancedPlan(steps, sorted(leftover))


def straggler_ratio(step_times: Sequence[Sequence[float]]) -> float:
    """max/mean of the ranks' times, summed over steps: the time all ranks spend per step (waiting for the
    slowest) over the time they would spend if balanced. 1.0 is perfect balance."""
    if not step_times or not all(step_times):
        raise ValueError("straggler_ratio needs at least one step with one time per rank")
    return sum(max(s) for s in step_times) / sum(sum(s) / len(s) for s in step_times)
