"""Random-number state: seeding a run, and this rank's generator states as a checkpoint component.

Every rank builds the model from the same seed (identical initial weights, whatever DeepSpeed broadcasts), then draws
from its own stream: `rank_seed(seed, rank)` gives each rank different dropout / LoRA-dropout masks and DataLoader
worker seeds (torch derives those from the rank's generator), with no collision between (seed, rank) pairs.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Rank `rank`'s training seed: a hash of (seed, rank), so seed 0 rank 1 is not seed 1 rank 0. Fits numpy's
    32-bit seed range."""
    return int(np.random.SeedSequence([seed, rank, 0x52414E4B]).generate_state(1)[0])


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
    """Checkpoint component: this rank's generator states (the checkpointer keeps every rank's component states)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def state_dict(self) -> dict:
        return _local_state()

    def load_state_dict(self, state: dict) -> None:
        if "per_rank" in state:  # checkpoints of client format 2 gathered every rank's states here
            states = state["per_rank"]
            state = states[self.rank] if self.rank < len(states) else states[0]
        _set_local_state(state)
