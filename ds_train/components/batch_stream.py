"""The training loop's supply of collated micro-batches.

`BatchStream` owns the sampler and the DataLoader: it skips rows that failed to load (logging and counting them, and
stopping past `data.max_bad_fraction`), measures how long the loop waited for data, and saves/restores the data
position as a checkpoint component. A reason to stop found here (too many bad rows, the monitor's halt on micro-
batches with no usable sample) goes to `report` when one is given, so that every rank stops together (see
components/agreement.py); `next_batch` then returns None. `add_tap` is the public seam through which tests (and
users) see or change each collated batch before it reaches the device; `screen` (the health monitor's batch checks)
runs after the taps and may drop samples, or the whole micro-batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

from data_pipeline.errors import InputError
from data_pipeline.loading.samplers import PositionalBatchSampler
from data_pipeline.types import BadSample
from ds_train.monitor.health import HealthError

log = logging.getLogger("ds_train")
MIN_ROWS_BEFORE_BAD_FRACTION = 100  # rows seen before data.max_bad_fraction can stop a run

Tap = Callable[[int, dict], dict]  # (index of the batch since the tap was added, collated batch) -> batch


class TooManyBadRows(InputError):
    """More than `data.max_bad_fraction` of the rows seen failed to load."""


class BatchStream:
    def __init__(
        self, sampler: PositionalBatchSampler, make_loader: Callable[[PositionalBatchSampler], DataLoader],
        max_bad_fraction: float, screen: Callable[[dict], dict] | None = None,
        report: Callable[[Exception], None] | None = None,
    ) -> None:  # fmt: skip
        self.sampler = sampler
        self._make_loader = make_loader
        self.max_bad_fraction = max_bad_fraction
        self.screen = screen
        self.report = report
        self.halted = False  # a reason to stop was reported: no more batches
        self.fetched = 0  # micro-batches taken from the loader (the data position)
        self.rows_seen = 0  # rows fetched, and how many of them failed to load
        self.bad_samples = 0
        self.wait_seconds = 0.0  # time spent waiting for the loader since the last `take_wait_seconds()`
        self._taps: list[Tap] = []
        self._batches: Iterator[dict] | None = None

    def add_tap(self, tap: Tap) -> None:
        """Route every later collated batch through `tap(index, batch)` before it is returned."""
        count = iter(range(1 << 62))
        self._taps.append(lambda batch: tap(next(count), batch))

    def next_batch(self) -> dict | None:
        """The next collated micro-batch (CPU tensors) with at least one loadable row, failed rows removed; None once
        a reason to stop was reported."""
        while not self.halted:
            if self._batches is None:  # created on first use, after a checkpoint may have moved the sampler
                self.sampler.consumed = self.fetched
                self._batches = iter(self._make_loader(self.sampler))
            started = time.perf_counter()
            batch = next(self._batches)
            self.wait_seconds += time.perf_counter() - started
            self.fetched += 1
            for tap in self._taps:
                batch = tap(batch)
            bad = batch.pop("bad_samples", [])
            self._count_rows(bad, len(batch.get("sample_ids", ())))
            if batch.get("empty"):
                continue
            if self.screen is not None:
                try:
                    batch = self.screen(batch)
                except HealthError as err:
                    self._stop(err)
                    break
            if not batch.get("empty"):
                return batch
        return None

    def _stop(self, err: Exception) -> None:
        if self.report is None:
            raise err
        self.report(err)
        self.halted = True

    def next_batches(self, count: int) -> list[dict | None]:
        return [self.next_batch() for _ in range(count)]

    def close(self) -> None:
        """Shut the DataLoader workers down now (a later `next_batch` starts new ones at the same position).

        Left to interpreter exit, multiprocessing's atexit hook SIGTERMs the still-running persistent workers while
        torch's SIGCHLD handler is armed, and every rank ends with a "DataLoader worker ... is killed by signal"
        traceback (the trainer and its stream form a reference cycle, so the iterator is not freed before exit)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # only the multi-process iterator has workers
        if shutdown is not None:
            shutdown()  # what the iterator's __del__ does: stop each worker, join it, disarm the SIGCHLD check

    def take_wait_seconds(self) -> float:
        waited, self.wait_seconds = self.wait_seconds, 0.0
        return waited

    def _count_rows(self, bad: list[BadSample], good: int) -> None:
        self.rows_seen += good + len(bad)
        self.bad_samples += len(bad)
        for sample in bad:
            log.warning("skipped sample %s: %s", sample.sample_id, sample.reason)
        fraction = self.bad_samples / max(1, self.rows_seen)
        if bad and self.rows_seen >= MIN_ROWS_BEFORE_BAD_FRACTION and fraction > self.max_bad_fraction:
            self._stop(TooManyBadRows(
                f"{self.bad_samples} of {self.rows_seen} rows failed to load ({fraction:.1%} > "
                f"data.max_bad_fraction={self.max_bad_fraction}); last: {bad[-1].sample_id}: {bad[-1].reason}"
            ))  # fmt: skip

    def state_dict(self) -> dict:
        """The data position after the micro-batches fetched so far (a DataLoader prefetching ahead has pulled more
        indices from the sampler than were trained on, so the position is computed from `fetched`)."""
        return {
            "fetched": self.fetched, "position": self.sampler.state_dict(self.fetched),
            "rows_seen": self.rows_seen, "bad_samples": self.bad_samples,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if self._batches is not None:
            raise RuntimeError("the data position can only be restored before the first batch is fetched")
        self.fetched = int(state["fetched"])
        self.sampler.consumed = self.fetched
        if state.get("position") is not None:
            self.sampler.load_state_dict(state["position"])
            self.fetched = self.sampler.consumed
        self.rows_seen = int(state.get("rows_seen", 0))
        self.bad_samples = int(state.get("bad_samples", 0))
