"""Deterministic, rank-disjoint, resumable micro-batch sampler.

Micro-batch k (counted across epochs) on rank r is a pure function of (seed, k, r), so a resumed run that skips the
first `consumed` micro-batches sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class PositionalBatchSampler(Sampler[list[int]]):
    """Base of the samplers: micro-batch k is `batch_at(k)`, a pure function of the position, so resuming is setting
    `consumed`. Subclasses set `seed` and `consumed` and implement `batch_at`."""

    seed: int
    consumed: int

    def batch_at(self, index: int) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batch = self.batch_at(self.consumed)
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} differs from the run's seed {self.seed}")
        self.consumed = int(state["consumed"])


class ResumableBatchSampler(PositionalBatchSampler):
    """Yields lists of dataset indices, `batch_size` each, forever (epochs follow each other)."""

    def __init__(self, num_examples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if num_examples < batch_size * world_size:
            raise ValueError(
                f"dataset has {num_examples} examples; need at least micro_batch_size x world_size = "
                f"{batch_size} x {world_size}"
            )
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.consumed = 0
        # Every rank takes the same number of batches per epoch, so ranks never wait on each other at an epoch end.
        self.batches_per_epoch = num_examples // (batch_size * world_size)

    def batch_at(self, index: int) -> list[int]:
        epoch, within = divmod(index, self.batches_per_epoch)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_examples, generator=gen)
        start = (within * self.world_size + self.rank) * self.batch_size
        return order[start : start + self.batch_size].tolist()
