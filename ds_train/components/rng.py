"""Random-number state: seeding a run, and every rank's generator states as a checkpoint component."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _local_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on the GPU (e.g. model.lora_dropout) draws from the current device's
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_local_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGState:
    """Checkpoint component: `state_dict()` gathers every rank's generator states (a collective: all ranks call it),
    `load_state_dict` restores this rank's (rank 0's when the checkpoint had fewer ranks)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def state_dict(self) -> dict:
        states: list = [None] * self.world_size
        if dist.is_initialized():
            dist.all_gather_object(states, _local_state())
        else:
            states = [_local_state()]
        return {"per_rank": states}

    def load_state_dict(self, state: dict) -> None:
        states = state["per_rank"]
        _set_local_state(states[self.rank] if self.rank < len(states) else states[0])
