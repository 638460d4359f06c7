"""Token-budget micro-batches: length-bucketed, rank-disjoint, deterministic by (seed, epoch), resumable mid-epoch.

Each epoch: shuffle the examples (seeded), cut the order into buckets of `bucket_batches x` roughly a batch's worth of
examples, sort each bucket by length and pack it greedily into micro-batches whose padded size
(longest x count) stays within `max_tokens`; shuffle the micro-batches (seeded) and deal them to the ranks in turn.
Every rank gets the same number of micro-batches in every epoch: the first epoch's count. Later epochs pack a little
differently; their extra micro-batches are dropped and missing ones repeat from the epoch's start. This keeps ranks in
lockstep (no rank waits at an epoch boundary) and makes "micro-batch k" an O(1) lookup for resuming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from data_pipeline.sampler import PositionalBatchSampler


class TokenBudgetBatchSampler(PositionalBatchSampler):
    """Yields lists of dataset indices forever (epochs follow each other); `consumed` counts yielded micro-batches."""

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        bucket_batches: int = 64,
        max_batch_size: int = 0,
    ) -> None:
        if not lengths:
            raise ValueError("no examples to batch")
        too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
        if too_long:
            raise ValueError(
                f"{len(too_long)} example(s) are longer than data.max_tokens={max_tokens} "
                f"(e.g. index {too_long[0]}: {lengths[too_long[0]]} tokens); raise the budget or filter them"
            )
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.max_tokens = max_tokens
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.bucket_batches = bucket_batches
        self.max_batch_size = max_batch_size
        self.consumed = 0
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self._per_epoch = len(self.epoch_batches(0)) // world_size
        if self._per_epoch == 0:
            raise ValueError(f"the data makes fewer micro-batches than ranks ({world_size}); lower data.max_tokens")

    def _pack(self, order: list[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index in order:
            n = int(self.lengths[index])
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
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        mean = float(self.lengths.float().mean())
        per_bucket = max(1, int(self.bucket_batches * self.max_tokens / max(1.0, mean)))
        batches: list[list[int]] = []
        for start in range(0, len(order), per_bucket):
            bucket = sorted(order[start : start + per_bucket], key=lambda i: int(self.lengths[i]))
            batches += self._pack(bucket)
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
        for batch in self.epoch_batches(epoch):
            sizes = self.lengths[batch]
            real += int(sizes.sum())
            padded += int(sizes.max()) * len(batch)
        return real / max(1, padded)
