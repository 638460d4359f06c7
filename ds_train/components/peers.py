"""Lost peers: a rank that dies, hangs or is cut off ends the run in bounded time, with one line naming it.

Two ways a peer goes away. A dead process fails the next collective at once on its peers (gloo: "Connection closed
by peer"); a hung process, or a host cut off the network, fails nothing, and the other ranks wait in their next
collective for the process group's timeout (30 minutes by default, on every host). So each rank beats a counter in the
process group's key-value store (hosted by rank 0's process) from a thread, and watches its peers' counters:
- a peer whose counter stands still for `train.peer_timeout_minutes` (or a store that cannot be reached that long:
  rank 0's process is gone) ends this rank: one `error:` line naming the rank(s) and host(s), exit code 9;
- a collective that fails asks the counters who stopped (`PeerWatch.lost`), and the trainer raises `PeerLost`
  naming them instead of the transport's traceback.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from data_pipeline.errors import prints_here
from ds_train.components.agreement import gather_objects
from ds_train.errors import EXIT_LOST_PEER

log = logging.getLogger("ds_train")
BEAT_KEY, DONE_KEY = "ds_train_peers/beat/{}", "ds_train_peers/done/{}"
# What a collective raises when a peer went away, by transport (gloo, NCCL, the store).
TRANSPORT_WORDS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "gloo",
                   "Socket Timeout", "Connection refused")  # fmt: skip


def is_transport_error(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and any(word in str(err) for word in TRANSPORT_WORDS)


def _watch_store(timeout_s: float):
    """A connection of our own to the process group's store (hosted by rank 0's process): the watch thread must not
    share the main thread's socket. Without MASTER_ADDR/MASTER_PORT, the process group's own store."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return dist.distributed_c10d._get_default_store()  # no public accessor
    return dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=min(30.0, timeout_s)),
                         wait_for_workers=False)  # fmt: skip


class PeerWatch:
    """Heartbeats of every rank through the process group's store, watched by a daemon thread."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.interval_s = max(0.25, min(10.0, timeout_s / 12))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.hosts: list[str] = gather_objects(socket.gethostname())  # a collective: every rank builds its watch
        self.store = _watch_store(timeout_s)
        self._stop = threading.Event()
        self._last: dict[int, tuple[int, float]] = {}  # peer -> (counter, when it last moved)
        self._thread = threading.Thread(target=self._run, name="ds_train-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """This rank leaves on purpose: peers stop watching it."""
        self._stop.set()
        try:
            self.store.set(DONE_KEY.format(self.rank), "1")
        except Exception:  # the store (rank 0's process) may be gone already at the end of a run
            pass

    def describe(self, ranks: list[int]) -> str:
        return ", ".join(f"rank {r} on {self.hosts[r]}" for r in ranks)

    def lost(self, wait_s: float | None = None) -> list[int]:
        """Peers whose counter does not move within `wait_s` (default: three beats); rank 0 when the store (in rank
        0's process) cannot be reached."""
        wait_s = 3 * self.interval_s if wait_s is None else wait_s
        try:
            before = {p: self._counter(p) for p in self._peers()}
            time.sleep(wait_s)
            return [p for p, value in before.items() if self._counter(p) == value and not self._done(p)]
        except Exception:
            return [0]

    def _peers(self) -> list[int]:
        return [p for p in range(self.world_size) if p != self.rank]

    def _counter(self, peer: int) -> int:
        return int(self.store.add(BEAT_KEY.format(peer), 0))

    def _done(self, peer: int) -> bool:
        return bool(self.store.check([DONE_KEY.format(peer)]))

    def _beat(self) -> None:
        self.store.add(BEAT_KEY.format(self.rank), 1)

    def _run(self) -> None:
        unreachable_since: float | None = None
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                self._beat()
                stale = []
                for peer in self._peers():
                    value = self._counter(peer)
                    if self._last.get(peer, (None, 0.0))[0] != value:
                        self._last[peer] = (value, now)
                    elif now - self._last[peer][1] > self.timeout_s and not self._done(peer):
                        stale.append(peer)
                unreachable_since = None
            except Exception:
                unreachable_since = unreachable_since or now
                stale = [0] if now - unreachable_since > self.timeout_s else []
            if stale and not self._stop.is_set():
                self._give_up(stale)

    def _give_up(self, ranks: list[int]) -> None:
        """End this rank from the watch thread: the main thread may be blocked in a collective that never returns."""
        minutes = self.timeout_s / 60
        if prints_here():
            print(f"error: lost {self.describe(ranks)}: no sign of life for {minutes:g} min "
                  f"(train.peer_timeout_minutes); the run stopped, restart it with --resume", file=sys.stderr,
                  flush=True)  # fmt: skip
        os._exit(EXIT_LOST_PEER)
