"""Which reference an example is cloned from, chosen at training time per example and per epoch.

`fixed`: the manifest's pairing, as prepared. `same_speaker`: in each epoch, example i takes as its reference another
stored utterance of its own speaker (any file of that speaker in the set, reference or target, never i's own target),
drawn from (seed, epoch) alone, so the choice is deterministic and a resumed run sees the same references. Utterances
lasting outside [min_seconds, max_seconds] are not offered, nor, when the run feeds Whisper, those stored without
PCM. An example without a speaker, or whose speaker has no other utterance, keeps its prepared reference.
Voice-cloning trainers get their robustness from varied prompts; a pairing frozen at `prepare` time gives one prompt
per utterance for the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ReferenceMode = Literal["fixed", "same_speaker"]
KEEP_PREPARED = -1  # a drawn uid meaning "the example's prepared reference"


@dataclass(frozen=True)
class ReferencePolicy:
    mode: ReferenceMode = "fixed"
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    seed: int = 0


class ReferenceDraws:
    """Per-epoch draws of `same_speaker` references.

    example_speakers / example_targets: per example, its speaker (or None) and its target's uid.
    donor_uids / donor_speakers / donor_seconds: the stored utterances that may serve as a reference (already limited
    to those with the PCM a Whisper run needs)."""

    def __init__(
        self,
        example_speakers: Sequence[str | None],
        example_targets: Sequence[int],
        donor_uids: Sequence[int],
        donor_speakers: Sequence[str | None],
        donor_seconds: Sequence[float],
        policy: ReferencePolicy,
    ) -> None:
        self.policy = policy
        eligible = sorted(
            (speaker, uid)
            for uid, speaker, seconds in zip(donor_uids, donor_speakers, donor_seconds, strict=True)
            if speaker is not None and policy.min_seconds <= seconds <= policy.max_seconds
        )
        self.flat = np.array([uid for _, uid in eligible], dtype=np.int64)  # donors grouped by speaker, uid order
        group: dict[str, tuple[int, int]] = {}
        for position, (speaker, _) in enumerate(eligible):
            start, count = group.get(speaker, (position, 0))
            group[speaker] = (start, count + 1)
        n = len(example_speakers)
        self.start = np.zeros(n, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.own = np.full(n, -1, dtype=np.int64)  # position of the example's target among its donors, or -1
        for i, (speaker, target) in enumerate(zip(example_speakers, example_targets, strict=True)):
            if speaker is None or speaker not in group:
                continue
            start, count = group[speaker]
            self.start[i], self.count[i] = start, count
            at = int(np.searchsorted(self.flat[start : start + count], target))
            if at < count and self.flat[start + at] == target:
                self.own[i] = at
        self._cache: tuple[int, np.ndarray] | None = None

    def speaker_max(self, value_of: dict[int, int]) -> np.ndarray:
        """[N] int64: the largest `value_of[uid]` over the donors of each example's speaker (its own target included,
        so a bound over what it can draw; one pass over the donors), -1 where it draws from none."""
        best = np.full(len(self.start), -1, dtype=np.int64)
        if not len(self.flat):
            return best
        values = np.array([value_of[int(uid)] for uid in self.flat], dtype=np.int64)
        starts = np.unique(self.start[self.count > 0])
        group_max = dict(zip(starts.tolist(), np.maximum.reduceat(values, starts).tolist(), strict=True))
        drawing = (self.count - (self.own >= 0)) > 0
        best[drawing] = [group_max[s] for s in self.start[drawing].tolist()]
        return best

    def candidates(self, i: int) -> list[int]:
        """The uids example i may draw from (its own target excluded); [] when it keeps its prepared reference."""
        donors = self.flat[self.start[i] : self.start[i] + self.count[i]].tolist()
        return donors if self.own[i] < 0 else donors[: self.own[i]] + donors[self.own[i] + 1 :]

    def epoch(self, epoch: int) -> np.ndarray:
        """[N] int64: each example's reference uid in `epoch` (KEEP_PREPARED where it keeps its own)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        offered = self.count - (self.own >= 0)
        pick = np.floor(np.random.default_rng([self.policy.seed, epoch]).random(len(offered)) * offered)
        pick = pick.astype(np.int64)
        pick += (self.own >= 0) & (pick >= self.own)  # step over the example's own target
        drawn = np.where(offered > 0, self.flat[np.minimum(self.start + pick, max(0, len(self.flat) - 1))],
                         KEEP_PREPARED) if len(self.flat) else np.full(len(offered), KEEP_PREPARED)  # fmt: skip
        self._cache = (epoch, drawn)
        return drawn
