"""What the ranks decide together.

A rank that stops on its own (a halt, an error) leaves the others waiting in their next collective until the process
group's timeout, on another host for as long as 30 minutes. So a rank-local reason to stop is recorded, not raised;
at the next agreement point (each micro-batch, each step boundary) every rank learns whether any rank has one, and
all raise the same error, with the same message naming the rank and host it came from.
"""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a collective: all ranks call it)."""
    if not _distributed():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (a collective)."""
    if not _distributed():
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _parts(err: Exception) -> tuple:
    """What rebuilds `err` on another rank: pickling an exception calls its constructor with `args`, which fails for
    classes whose constructor takes other arguments (HealthError(check, message))."""
    return type(err), err.args, dict(err.__dict__)


def _rebuild(parts: tuple, message: str) -> Exception:
    cls, args, attributes = parts
    err = cls.__new__(cls)
    err.__dict__.update(attributes)
    err.args = (message, *args[1:])
    return err


class HaltVote:
    """Rank-local reasons to stop, decided together. `record(err)` keeps the first; `decide()` (a collective, called
    at the same points on every rank) raises on every rank the lowest rank's error when any rank has one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pending: Exception | None = None
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.host = socket.gethostname()

    def record(self, err: Exception) -> None:
        if self.pending is None:
            self.pending = err

    def decide(self) -> None:
        if not any_rank(self.pending is not None, self.device):
            return
        mine = None if self.pending is None else (self.rank, self.host, str(self.pending), _parts(self.pending))
        rank, host, message, parts = next(r for r in gather_objects(mine) if r is not None)
        raise _rebuild(parts, f"{message} [rank {rank} on {host}]")
