"""Stopping a run cleanly on SIGTERM/SIGINT, whichever process of the launch tree the signal reaches.

The ranks save at the end of the current step (`GracefulStop`). DataLoader workers must outlive a stop signal sent to
the whole process tree (the deepspeed launcher, SLURM and a terminal's Ctrl-C all signal them too): a worker that dies
takes its rank down with "DataLoader worker ... is killed by signal" before it can save, so `worker_init_fn` makes
workers deaf to every stop signal but their own rank's (multiprocessing ends its workers with SIGTERM at exit).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After a signal stop, later SIGTERMs are ignored this long: the deepspeed launcher sends one to each rank in turn
# while they exit, and SLURM repeats it at the time limit; the checkpoint is already written by then.
LATE_SIGNAL_WINDOW_S = 120.0


class GracefulStop:
    """SIGTERM/SIGINT and the wall-time limit set a flag; the loop saves and stops at the end of the current step.
    Ranks agree through an all-reduce so every rank saves the same step (and none hangs in a collective)."""

    _CODES = {None: 0, "wall-time limit": 1, "SIGTERM": 2, "SIGINT": 3}

    def __init__(self, max_wall_minutes: float) -> None:
        self.reason: str | None = None
        self.signals_received = 0
        self.deadline = time.monotonic() + max_wall_minutes * 60 if max_wall_minutes > 0 else None
        self._previous = {}
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass

    def _handle(self, signum: int, frame) -> None:
        # Repeats (the launcher's SIGTERM after a group-wide SIGINT, a second Ctrl-C) do not cut the save short: the
        # launcher's SIGKILL after its grace period is the hard stop.
        self.signals_received += 1
        if self.reason is None:
            self.reason = signal.Signals(signum).name

    def agreed_reason(self, device: torch.device) -> str | None:
        """The stop reason every rank agrees on (the highest code of any rank), or None to go on."""
        if self.deadline is not None and time.monotonic() > self.deadline and self.reason is None:
            self.reason = "wall-time limit"
        flag = torch.tensor(float(self._CODES.get(self.reason, 2)), device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return {v: k for k, v in self._CODES.items()}[int(flag.item())]

    def restore(self) -> None:
        """Give the signals back; after a signal stop, SIGTERM stays ignored for a while so the exit finishes."""
        for sig, handler in self._previous.items():
            if sig == signal.SIGTERM and self.reason in ("SIGTERM", "SIGINT"):
                handler = _LateSignal(handler, LATE_SIGNAL_WINDOW_S)
            signal.signal(sig, handler)


class _LateSignal:
    """A signal handler that ignores the signal for `window_s` seconds, then hands it to `previous`."""

    def __init__(self, previous, window_s: float) -> None:
        self.previous, self.until = previous, time.monotonic() + window_s

    def __call__(self, signum: int, frame) -> None:
        if time.monotonic() < self.until:
            return
        signal.signal(signum, self.previous)
        if callable(self.previous):
            self.previous(signum, frame)
        elif self.previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the worker ignores SIGTERM/SIGINT from anyone but its rank.

    The rank finishes its step, saves and then shuts its workers down itself. Signals are blocked in every thread and
    taken by one thread with `sigwaitinfo`, which sees the sender: the rank's own SIGTERM (multiprocessing ends
    daemonic workers that way at exit) still ends the worker, so a rank never waits on a worker that will not die."""
    del worker_id
    rank_pid = os.getppid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)  # a Python handler inherited from the rank would only set a flag here
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_filter_stop_signals, args=(rank_pid,), name="stop-signal-filter", daemon=True).start()


def _filter_stop_signals(rank_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == rank_pid:
            # die of the signal as if it had never been blocked (exit status -SIGTERM, as the rank expects)
            os.kill(os.getpid(), info.si_signo)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [info.si_signo])
