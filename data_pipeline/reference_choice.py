"""Which reference an example is cloned from, chosen at training time per example and per epoch.

`fixed`: the manifest's pairing, as prepared. `same_speaker`: in each epoch, example i takes the reference of a row of
its own speaker (its own among them), drawn from (seed, epoch, i) alone, so the choice is deterministic and a resumed
run sees the same references; rows whose reference lasts outside [min_seconds, max_seconds] are not offered, and a
reference holding the example's own target audio is skipped at load time. Rows without a speaker keep their own.
Voice-cloning trainers get their robustness from varied prompts; a pairing frozen at `prepare` time gives one prompt
per utterance for the whole run.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

ReferenceMode = Literal["fixed", "same_speaker"]


@dataclass(frozen=True)
class ReferencePolicy:
    mode: ReferenceMode = "fixed"
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    seed: int = 0


class ReferencePool:
    """Candidate rows per example for `same_speaker` (the rows whose reference an example may take)."""

    def __init__(self, speakers: list[str | None], ref_seconds: list[float], policy: ReferencePolicy) -> None:
        self.policy = policy
        by_speaker: dict[str, list[int]] = defaultdict(list)
        for row, (speaker, seconds) in enumerate(zip(speakers, ref_seconds, strict=True)):
            if speaker is not None and policy.min_seconds <= seconds <= policy.max_seconds:
                by_speaker[speaker].append(row)
        self.speakers = speakers
        self.by_speaker = dict(by_speaker)

    def candidates(self, i: int) -> list[int]:
        """Rows whose reference example i may take, in a fixed order; [i] when it has no speaker or no candidate."""
        if self.policy.mode == "fixed" or self.speakers[i] is None:
            return [i]
        return self.by_speaker.get(self.speakers[i]) or [i]

    def order(self, i: int, epoch: int) -> list[int]:
        """Example i's candidates in the order to try in `epoch` (the first that is not its own target wins)."""
        rows = self.candidates(i)
        if len(rows) == 1:
            return rows
        start = random.Random(f"{self.policy.seed}:{epoch}:{i}").randrange(len(rows))
        return rows[start:] + rows[:start]
