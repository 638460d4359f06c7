"""Deterministic, rank-disjoint, resumable micro-batch samplers.

Each epoch is a seeded list of global micro-batches that does not depend on the number of ranks; rank r of W takes
global positions r, r + W, r + 2W, ... Rank r's micro-batch k (counted across epochs) is therefore a pure function of
(seed, k, r, W), so a resumed run that skips the first `consumed` micro-batches sees exactly the batches an
uninterrupted run would. A checkpoint also records the epoch and the global position reached, so a run resumed on a
different number of ranks (from a universal checkpoint) continues the interrupted epoch where it stopped: no global
micro-batch of that epoch is repeated, and at most W - 1 of its last ones are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: the next micro-batch is global position `offset` of `epoch` (on rank 0; rank r
    takes offset + r). `consumed` is the per-rank micro-batch count at that point."""

    epoch: int
    offset: int
    consumed: int


class PositionalBatchSampler(Sampler[list[int]]):
    """Base of the samplers. Subclasses set `seed`, `rank`, `world_size`, `consumed`, `batches_per_epoch` (per rank,
    the same for every epoch) and implement `global_batch(epoch, position)`."""

    seed: int
    rank: int
    world_size: int
    consumed: int
    batches_per_epoch: int
    _resumed_at: DataPosition | None = None

    def global_batch(self, epoch: int, position: int) -> list[int]:
        """Dataset indices of global micro-batch `position` of `epoch` (position < batches_per_epoch x world_size)."""
        raise NotImplementedError

    def _locate(self, index: int) -> tuple[int, int]:
        """This rank's micro-batch `index` -> (epoch, global position)."""
        per_epoch, ranks = self.batches_per_epoch, self.world_size
        start = self._resumed_at
        if start is None or index < start.consumed:
            epoch, within = divmod(index, per_epoch)
            return epoch, within * ranks + self.rank
        k = index - start.consumed
        # The interrupted epoch may have been cut for another rank count: finish what is left of it in whole rounds.
        left = max(0, (per_epoch * ranks - start.offset) // ranks)
        if k < left:
            return start.epoch, start.offset + k * ranks + self.rank
        epoch, within = divmod(k - left, per_epoch)
        return start.epoch + 1 + epoch, within * ranks + self.rank

    def batch_at(self, index: int) -> list[int]:
        """This rank's micro-batch number `index` (counted across epochs)."""
        return self.global_batch(*self._locate(index))

    def position(self, consumed: int) -> DataPosition:
        """The data position after `consumed` micro-batches on every rank (rank-independent)."""
        epoch, offset = self._locate(consumed)
        return DataPosition(epoch, offset - self.rank, consumed)

    def resume_at(self, position: DataPosition) -> None:
        """Continue from `position`, which may come from a run with another number of ranks."""
        self.consumed = position.consumed
        self._resumed_at = position

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batch = self.batch_at(self.consumed)
            self.consumed += 1
            yield batch

    def state_dict(self, consumed: int | None = None) -> dict:
        """The position after `consumed` micro-batches (default: as many as were yielded; a DataLoader prefetching
        ahead of training has pulled more than were trained on, so the trainer passes its own count)."""
        p = self.position(self.consumed if consumed is None else consumed)
        return {"consumed": p.consumed, "epoch": p.epoch, "offset": p.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Accepts `state_dict()` output; a state with only `consumed` (older checkpoints) means the same rank count."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} differs from the run's seed {self.seed}")
        self._resumed_at = None
        consumed = int(state["consumed"])
        if "epoch" in state:
            self.resume_at(DataPosition(int(state["epoch"]), int(state["offset"]), consumed))
        else:
            self.consumed = consumed


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
        self._order: tuple[int, list[int]] | None = None

    def global_batch(self, epoch: int, position: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(self.num_examples, generator=gen).tolist())
        start = position * self.batch_size
        return self._order[1][start : start + self.batch_size]
