"""Packing loader whose data-parallel ranks get rows of equal estimated compute cost at every step.

`data.loader.PackedLoader` lets each rank plan its own share of the samples into rows of a token budget,
so at a step one rank may hold a row of one long clip (attention quadratic in its length) while another
holds many short ones, and every rank waits at the gradient all-reduce for the slowest. Here every rank
reads the SAME window of `window * world_size` samples, plans it with
`videodit.balanced_packing.plan_balanced_steps` (steps of `world_size` rows of equal cost, `rank_tokens *
sequence` tokens at most per row), shuffles the steps with a seed shared by all ranks, and serves row
`rank` of each step. Every rank therefore serves the same number of rows per window, in step order.

`cost(num_tokens) -> float` is a sample's estimated training cost, e.g. `CostModel.sample_flops` of
videodit.cost_model (passed in: data code does not import the model). Position, resume and unreadable
samples work as in PackedLoader. Samples of a window's last step that would leave a rank without a row
are not served in that epoch (`source.stats["unbalanced"]` counts them); they are rare, since a window
normally holds many more samples than ranks.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from data.dataset import epoch_order
from data.loader import PackedLoader
from videodit.balanced_packing import plan_balanced_steps


class CostBalancedLoader(PackedLoader):
    """Rows for data-parallel rank `rank` of `world_size`; a step's rows have equal estimated cost."""

    def __init__(self, source, rank_tokens: int, cost: Callable[[int], float], seed: int = 0, rank: int = 0,
                 world_size: int = 1, sequence: int = 1, window: int = 32, shuffle: bool = True,
                 keep_tokens: int = 0):
        if sequence < 1:
            raise ValueError(f"sequence must be >= 1, got {sequence}")
        super().__init__(source, rank_tokens * sequence, seed, rank, world_size, window, shuffle, keep_tokens)
        self.rank_tokens, self.sequence, self.cost = rank_tokens, sequence, cost

    def my_indices(self, epoch: int) -> list[int]:
        """Every rank reads the whole epoch order (the plan shares it out)."""
        return epoch_order(len(self.source), self.seed, epoch, self.shuffle)

    def num_windows(self, epoch: int) -> int:
        return -(-len(self.my_indices(epoch)) // (self.window * self.world_size))

    def plan_window(self, epoch: int, window_index: int) -> list[list[int]]:
        """This rank's rows of one window, one per step, in the order they are served."""
        size = self.window * self.world_size
        chunk = self.my_indices(epoch)[window_index * size : (window_index + 1) * size]
        lengths = {i: self.source.token_length(i) for i in chunk}
        if self.keep_tokens:  # planned with what the flow loss keeps of a longer sample (as PackedLoader)
            lengths = {i: None if n is None else min(n, self.keep_tokens) for i, n in lengths.items()}
        valid = [i for i in chunk if lengths[i] is not None]
        plan = plan_balanced_steps([lengths[i] for i in valid], [self.cost(lengths[i]) for i in valid],
                                   self.world_size, self.rank_tokens, self.sequence)
        if plan.leftover:
            self.source.stats["unbalanced"] = self.source.stats.get("unbalanced", 0) + len(plan.leftover)
        steps = plan.steps
        if self.shuffle:  # the same order on every rank: the seed leaves the rank out
            random.Random(f"videodit-steps-{self.seed}-{epoch}-{window_index}").shuffle(steps)
        return [[valid[j] for j in step[self.rank]] for step in steps]
