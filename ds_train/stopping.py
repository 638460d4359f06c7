"""Stopping cleanly: SIGTERM/SIGINT and the wall-time limit set a flag that every rank agrees on at the end of a step,
so all ranks save the same step and exit."""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist


class GracefulStop:
    """SIGTERM/SIGINT and the wall-time limit set a flag; the loop saves and stops at the end of the current step.
    Ranks agree through an all-reduce so every rank saves the same step (and none hangs in a collective)."""

    def __init__(self, max_wall_minutes: float) -> None:
        self.reason: str | None = None
        self.deadline = time.monotonic() + max_wall_minutes * 60 if max_wall_minutes > 0 else None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass

    def _handle(self, signum: int, frame) -> None:
        self.reason = signal.Signals(signum).name

    def agreed_reason(self, device: torch.device) -> str | None:
        if self.deadline is not None and time.monotonic() > self.deadline and self.reason is None:
            self.reason = "wall-time limit"
        codes = {None: 0, "wall-time limit": 1, "SIGTERM": 2, "SIGINT": 3}
        flag = torch.tensor(float(codes.get(self.reason, 2)), device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return {v: k for k, v in codes.items()}[int(flag.item())]

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


