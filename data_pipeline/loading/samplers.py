"""Deterministic, rank-disjoint, resumable micro-batch samplers: fixed-size (`ResumableBatchSampler`) and token-budget
(`TokenBudgetBatchSampler`).

Each epoch is a seeded list of global micro-batches that does not depend on the number of ranks; rank r of W takes
global positions r, r + W, r + 2W, ... Rank r's micro-batch k (counted across epochs) is therefore a pure function of
(seed, k, r, W), so a resumed run that skips the first `consumed` micro-batches sees exactly the batches an
uninterrupted run would. A checkpoint also records the epoch and the global position reached, so a run resumed on a
different number of ranks (from a universal checkpoint) continues the interrupted epoch where it stopped: no global
micro-batch of that epoch is repeated, and at most W - 1 of its last ones are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from data_pipeline.errors import InputError


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
    with_epoch: bool = False  # yield (index, epoch) keys, for datasets whose examples depend on the epoch

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

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        while True:
            epoch, position = self._locate(self.consumed)
            batch = self.global_batch(epoch, position)
            self.consumed += 1
            yield [(i, epoch) for i in batch] if self.with_epoch else batch

    def state_dict(self, consumed: int | None = None) -> dict:
        """The position after `consumed` micro-batches (default: as many as were yielded; a DataLoader prefetching
        ahead of training has pulled more than were trained on, so the trainer passes its own count)."""
        p = self.position(self.consumed if consumed is None else consumed)
        return {"consumed": p.consumed, "epoch": p.epoch, "offset": p.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Accepts `state_dict()` output; a state with only `consumed` (older checkpoints) means the same rank count."""
        if state.get("seed", self.seed) != self.seed:
            raise InputError(
                f"checkpoint sampler seed {state['seed']} differs from the run's seed {self.seed}: resume with the "
                "seed the run started with (train.seed)"
            )
        self._resumed_at = None
        consumed = int(state["consumed"])
        if "epoch" in state:
            self.resume_at(DataPosition(int(state["epoch"]), int(state["offset"]), consumed))
        else:
            self.consumed = consumed


def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation seed of one epoch, from (seed, epoch) without collisions: `seed + epoch` made seed 0's epoch 1
    the same shuffle as seed 1's epoch 0. Same for every rank (the epoch's micro-batches are dealt to ranks after)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ResumableBatchSampler(PositionalBatchSampler):
    """Yields lists of dataset indices, `batch_size` each, forever (epochs follow each other)."""

    def __init__(self, num_examples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if num_examples < batch_size * world_size:
            raise InputError(
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
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._order = (epoch, torch.randperm(self.num_examples, generator=gen).tolist())
        start = position * self.batch_size
        return self._order[1][start : start + self.batch_size]


class TokenBudgetBatchSampler(PositionalBatchSampler):
    """Token-budget micro-batches: length-bucketed, rank-disjoint, deterministic by (seed, epoch), resumable mid-epoch.

    Each epoch: shuffle the examples (seeded), cut the order into buckets of `bucket_batches x` roughly a batch's
    worth of examples, sort each bucket by length and pack it greedily into micro-batches whose padded size (longest x
    count) stays within `max_tokens`; shuffle the micro-batches (seeded) and deal them to the ranks in turn.
    Every rank gets the same number of micro-batches in every epoch: the first epoch's count. Later epochs pack a little
    differently; their extra micro-batches are dropped and missing ones repeat from the epoch's start. This keeps ranks
    in lockstep (no rank waits at an epoch boundary) and makes "micro-batch k" an O(1) lookup for resuming.

    Yields lists of dataset indices forever (epochs follow each other); `consumed` counts yielded micro-batches."""

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        bucket_batches: int = 64,
        max_batch_size: int = 0,
        epoch_lengths: Callable[[int], Sequence[int]] | None = None,
    ) -> None:
        """`lengths`: each example's token count, or an upper bound of it when `epoch_lengths(epoch)` gives the real
        counts per epoch (examples whose reference is drawn per epoch): epochs are then packed on the real counts."""
        if not lengths:
            raise InputError("no examples to batch")
        too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
        if too_long:
            raise InputError(
                f"{len(too_long)} example(s) are longer than data.max_tokens={max_tokens} "
                f"(e.g. index {too_long[0]}: {lengths[too_long[0]]} tokens); raise the budget or filter them"
            )
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.epoch_lengths = epoch_lengths
        self.max_tokens = max_tokens
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.bucket_batches = bucket_batches
        self.max_batch_size = max_batch_size
        self.consumed = 0
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self._per_epoch = len(self.epoch_batches(0)) // world_size
        if self._per_epoch == 0:
            raise InputError(f"the data makes fewer micro-batches than ranks ({world_size}); lower data.max_tokens")

    def lengths_of(self, epoch: int) -> torch.Tensor:
        """[N] token counts the batches of `epoch` are packed on."""
        if self.epoch_lengths is None:
            return self.lengths
        return torch.as_tensor(list(self.epoch_lengths(epoch)), dtype=torch.long)

    def _pack(self, order: list[int], lengths: torch.Tensor) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index in order:
            n = int(lengths[index])
            full = self.max_batch_size and len(current) >= self.max_batch_size
            if current and (max(longest, n) * (len(current) + 1) > self.max_tokens or full):
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, n)
        if current:
            batches.append(current)
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' micro-batches of one epoch, in dealing order (rank r takes positions r, r + W, ...)."""
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        lengths = self.lengths_of(epoch)
        order = torch.randperm(len(lengths), generator=gen).tolist()
        mean = float(lengths.float().mean())
        per_bucket = max(1, int(self.bucket_batches * self.max_tokens / max(1.0, mean)))
        batches: list[list[int]] = []
        for start in range(0, len(order), per_bucket):
            bucket = sorted(order[start : start + per_bucket], key=lambda i: int(lengths[i]))
            batches += self._pack(bucket, lengths)
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        usable = len(shuffled) - len(shuffled) % self.world_size
        self._epoch_cache = (epoch, shuffled[:usable])
        return shuffled[:usable]

    @property
    def batches_per_epoch(self) -> int:
        return self._per_epoch

    def global_batch(self, epoch: int, position: int) -> list[int]:
        """Later epochs may pack into fewer micro-batches than the first: positions past the end wrap around."""
        batches = self.epoch_batches(epoch)
        return batches[position % len(batches)]

    def padding_efficiency(self, epoch: int = 0) -> float:
        """Real tokens / padded tokens over one epoch's micro-batches."""
        real = padded = 0
        lengths = self.lengths_of(epoch)
        for batch in self.epoch_batches(epoch):
            sizes = lengths[batch]
            real += int(sizes.sum())
            padded += int(sizes.max()) * len(batch)
        return real / max(1, padded)
