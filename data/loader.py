"""Packing data loader: per rank, an endless stream of rows of a fixed token budget.

Each epoch the manifest order is shuffled from (seed, epoch); this rank reads order[rank::world_size] in
windows of `window` samples. A window's samples are measured (token counts, which needs only a probe or
the cache index), grouped into rows with `videodit.packing.plan_rows` (first-fit decreasing, total
tokens <= budget), the rows are shuffled from (seed, epoch, rank, window), then loaded one row at a time.

Position = (epoch, window, row): `state_dict()` after a row has been consumed names the next row, and
`load_state_dict()` makes the stream continue exactly there (the window's plan is recomputed, it is
deterministic). Unreadable samples are skipped and counted in `source.stats["skipped"]`.

A source is anything with:
    `__len__()`, `stats` (dict), `set_epoch(epoch)`,
    `token_length(index) -> int | None` (None: unreadable), `load(index) -> dict | None`.
`data.dataset.VideoDataset` (raw videos) and `data.precache.LatentCache` (latent cache) are sources;
`WeightedSource` wraps one to draw its samples with per-sample weights.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from data.dataset import epoch_order
from videodit.packing import plan_rows


class PackedLoader:
    """Iterate rows: each row is a list of sample dicts whose token counts sum to <= `budget`."""

    def __init__(self, source, budget: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 window: int = 32, shuffle: bool = True, keep_tokens: int = 0):
        if budget < 1:
            raise ValueError(f"budget must be >= 1 token, got {budget}")
        if window < 1:
            raise ValueError(f"window must be >= 1 sample, got {window}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.source, self.budget, self.seed = source, budget, seed
        self.rank, self.world_size, self.window, self.shuffle = rank, world_size, window, shuffle
        # a sample longer than keep_tokens trains on a random keep_tokens of its tokens (NaViT token
        # dropping, done by the flow loss): rows are planned with what is kept
        self.keep_tokens = keep_tokens
        self.epoch, self.window_index, self.row_index = 0, 0, 0

    # ------------------------------------------------------------ position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "window": self.window_index, "row": self.row_index,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("seed"), state.get("world_size")) != (self.seed, self.world_size):
            raise ValueError(
                f"loader state was saved with seed={state.get('seed')}, "
                f"world_size={state.get('world_size')}; "
                f"this run has seed={self.seed}, world_size={self.world_size}"
            )
        self.epoch, self.window_index, self.row_index = state["epoch"], state["window"], state["row"]

    # ------------------------------------------------------------ planning

    def my_indices(self, epoch: int) -> list[int]:
        """Source indices this rank reads in `epoch`, in order."""
        return epoch_order(len(self.source), self.seed, epoch, self.shuffle)[self.rank :: self.world_size]

    def plan_window(self, epoch: int, window_index: int) -> list[list[int]]:
        """Rows (lists of source indices) of one window, in the order they are served."""
        mine = self.my_indices(epoch)
        chunk = mine[window_index * self.window : (window_index + 1) * self.window]
        lengths = {i: self.source.token_length(i) for i in chunk}
        if self.keep_tokens:
            lengths = {i: None if n is None else min(n, self.keep_tokens) for i, n in lengths.items()}
        valid = [i for i in chunk if lengths[i] is not None]
        rows = [[valid[j] for j in row] for row in plan_rows([lengths[i] for i in valid], self.budget)]
        if self.shuffle:
            random.Random(f"videodit-rows-{self.seed}-{epoch}-{self.rank}-{window_index}").shuffle(rows)
        return rows

    def num_windows(self, epoch: int) -> int:
        return -(-len(self.my_indices(epoch)) // self.window)

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[list[dict]]:
        empty_epochs = 0
        while True:
            self.source.set_epoch(self.epoch)
            served = 0
            while self.window_index < self.num_windows(self.epoch):
                rows = self.plan_window(self.epoch, self.window_index)
                while self.row_index < len(rows):
                    samples = [self.source.load(i) for i in rows[self.row_index]]
                    self.row_index += 1
                    samples = [s for s in samples if s is not None]
                    if samples:
                        served += 1
                        yield samples
                self.window_index, self.row_index = self.window_index + 1, 0
            self.epoch, self.window_index, self.row_index = self.epoch + 1, 0, 0
            empty_epochs = 0 if served else empty_epochs + 1
            if empty_epochs >= 2:  # (one empty epoch can be a resume at an epoch's end)
                raise ValueError(
                    f"rank {self.rank} of {self.world_size} has no readable samples "
                    f"({len(self.source)} in the source, {self.source.stats.get('skipped', 0)} skipped)"
                )


class WeightedSource:
    """A source whose sample j is drawn floor(w_j) times an epoch, plus once more with probability
    frac(w_j), the draw fixed by (seed, epoch): per-sample sampling weights, e.g. to train mostly on some
    sizes while still seeing the others (weight 0 leaves a sample out). Its length is the current epoch's
    draw; the loaders call `set_epoch` before they plan an epoch, so positions and resume stay exact."""

    def __init__(self, source, weights: list[float], seed: int = 0):
        if len(weights) != len(source):
            raise ValueError(f"{len(weights)} weights for a source of {len(source)} samples")
        if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError("sampling weights must be >= 0 with at least one > 0")
        self.source, self.weights, self.seed = source, list(weights), seed
        self.stats = source.stats
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = random.Random(f"videodit-weights-{self.seed}-{epoch}")
        self.order = []
        for j, w in enumerate(self.weights):
            whole, frac = divmod(w, 1.0)
            self.order += [j] * (int(whole) + (rng.random() < frac))
        if not self.order:  # every draw missed: keep the heaviest sample so an epoch is never empty
            self.order = [max(range(len(self.weights)), key=self.weights.__getitem__)]
        self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def token_length(self, i: int) -> int | None:
        return self.source.token_length(self.order[i])

    def load(self, i: int) -> dict | None:
        return self.source.load(self.order[i])

