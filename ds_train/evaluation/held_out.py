"""Held-out evaluation: dataset-level audio loss and top-1 accuracy on an eval set, every `train.eval_every` steps.

The metrics are token-weighted over the whole eval set (per codebook: summed cross-entropy / labelled tokens), so they
do not depend on how the set is cut into micro-batches or shared among ranks. Rank r of W takes global micro-batches
r, r + W, ...; a rank left without one in the last round re-runs one of its batches without counting it, because
under ZeRO-3 every forward gathers parameters collectively and all ranks must run the same number of forwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from data_pipeline.errors import InputError
from ds_train.model.loss import LossSums

log = logging.getLogger("ds_train")


def eval_batches(lengths: Sequence[int], batch_size: int, max_tokens: int = 0) -> list[list[int]]:
    """Every example exactly once, in length order (least padding): `batch_size` examples per micro-batch, or with
    `max_tokens` > 0 as many as fit a padded-token budget (an example longer than the budget gets a batch alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if max_tokens <= 0:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for index in order:  # ascending lengths: the newcomer is the longest of its batch
        if batches and lengths[index] * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def rank_share(batches: list[list[int]], rank: int, world_size: int) -> list[tuple[list[int], bool]]:
    """This rank's (indices, counted) micro-batches. Every rank gets ceil(len(batches) / world_size) of them; the
    ones past the end repeat an earlier batch with counted=False, so each example is counted exactly once."""
    if not batches:
        raise InputError("the eval set makes no micro-batch (data.eval_manifest / data.eval_prepared is empty)")
    rounds = -(-len(batches) // world_size)
    share = []
    for k in range(rounds):
        position = k * world_size + rank
        share.append((batches[position % len(batches)], position < len(batches)))
    return share


class Evaluator:
    """Runs the engine's forward (no gradients, eval mode) over this rank's share of the eval set.

    `prepare(batch)` moves a collated batch to the device and computes anything computed there (Whisper features)."""

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[list], dict],
        prepare: Callable[[dict], dict],
        num_codebooks: int,
        batch_size: int,
        max_tokens: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.dataset, self.collate, self.prepare = dataset, collate, prepare
        self.num_codebooks = num_codebooks
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.share = rank_share(eval_batches(dataset.lengths, batch_size, max_tokens), rank, world_size)
        self.rank, self.world_size, self.device = rank, world_size, device
        self.first_sample: tuple[dict, object] | None = None  # (batch, output) of the last run's first counted batch

    def with_dataset(self, dataset: Dataset) -> Evaluator:
        """An evaluator of another dataset with this one's collator, device preparation, batching and rank."""
        return Evaluator(
            dataset, self.collate, self.prepare, self.num_codebooks, self.batch_size, self.max_tokens, self.rank,
            self.world_size, self.device,
        )  # fmt: skip

    @torch.no_grad()
    def run(self, engine: torch.nn.Module) -> dict[str, float]:
        """-> eval/* scalars, identical on every rank."""
        started = time.perf_counter()
        was_training = engine.training
        engine.eval()
        sums = LossSums(self.num_codebooks)
        bad_samples = 0
        fallback: dict | None = None
        owed = 0
        self.first_sample = None
        try:
            for indices, counted in self.share:
                batch = self.collate([self.dataset[i] for i in indices])
                bad = batch.pop("bad_samples", [])
                if counted:
                    bad_samples += len(bad)
                    for sample in bad:
                        log.warning("eval: skipped sample %s: %s", sample.sample_id, sample.reason)
                if batch.get("empty"):
                    owed += 1  # the forward still has to happen (ZeRO-3), on a batch that loads
                    continue
                batch = self.prepare(batch)
                fallback = fallback or batch
                out = engine(**batch)
                if counted:
                    self.first_sample = self.first_sample or (batch, out)
                    sums.add(out, batch)
            if owed and fallback is None:
                raise RuntimeError(f"eval: every eval micro-batch of rank {self.rank} failed to load")
            for _ in range(owed):
                engine(**fallback)
        finally:
            engine.train(was_training)
        total = sums.all_reduce(self.device)
        bad_total = _sum_over_ranks(float(bad_samples), self.device)
        values = total.metrics("eval")
        values.update({"eval/samples": total.samples, "eval/bad_samples": bad_total,
                       "eval/time_s": time.perf_counter() - started})  # fmt: skip
        return values


def _sum_over_ranks(value: float, device: torch.device) -> float:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    tensor = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


class BestEval:
    """Checkpoint component: the lowest eval loss so far (`train.keep_best`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.best = math.inf

    def improves(self, eval_loss: float) -> bool:
        """Record `eval_loss` if it beats every earlier evaluation; True if it did (the same on every rank, since
        eval values are reduced over ranks)."""
        if not self.enabled or not math.isfinite(eval_loss) or eval_loss >= self.best:
            return False
        self.best = eval_loss
        return True

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
