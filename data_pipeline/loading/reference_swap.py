"""Reference swapping, to measure whether a model uses its reference (the conditioning gain).

Each sample of a set is paired with a *donor* of another speaker (`plan_swaps`: a seeded cross-speaker derangement,
deterministic, never a same-speaker pair); `SwappedDataset` builds sample i's target with its donor's reference
through the ordinary `LayoutBuilder`, so the swapped example differs from the true one only in its reference: its
target text, codes and labels are sample i's own. A swap mode says which part of the reference is swapped:

- `all`: the donor's transcript, codec codes and (with Whisper) waveform;
- `codes`: the donor's transcript and codec codes, the sample's own Whisper waveform;
- `whisper`: the sample's own transcript and codes, the donor's Whisper waveform.

The transcript travels with the codes: it is what the codes say, and a transcript that contradicts its audio would
confound the measure with a mismatch no real prompt has. Datasets provide the raw parts through `row(i)` (an
`EncodedRow`) and `speakers` (one label or None per example).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from torch.utils.data import Dataset

from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.prepare.shards import EncodedRow
from data_pipeline.types import BadSample, VoiceCloningExample

SwapMode = Literal["all", "codes", "whisper"]
SWAP_MODES: tuple[SwapMode, ...] = ("all", "codes", "whisper")


class SwappableDataset(Protocol):
    """What a dataset offers for swapping: its raw rows and speaker labels."""

    @property
    def speakers(self) -> list[str | None]: ...

    def row(self, i: int) -> EncodedRow: ...

    def row_sizes(self, i: int) -> RowSizes: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class SwapPlan:
    """indices[k] is a sample of the set, donors[k] the sample whose reference it gets (another speaker's)."""

    indices: list[int]
    donors: list[int]
    speakers: int  # distinct speakers among `indices`
    unlabelled: int  # samples left out because they have no speaker label


def plan_swaps(speakers: Sequence[str | None], seed: int) -> SwapPlan | str:
    """A seeded cross-speaker pairing of the labelled samples -> SwapPlan, or the reason there is none (a string).

    Samples are grouped by speaker (groups and members shuffled by `seed`), laid out group after group, and sample at
    position p gets the one at p + m (cyclically), m = the largest group's size: since every group is a contiguous run
    of at most m positions and n - m >= m, the donor is always another speaker's, and when no speaker has more than
    half the samples this is a permutation (every reference used once). Otherwise a permutation across speakers cannot
    exist, and each sample of the largest group draws its donor (seeded) among the other speakers' samples instead."""
    labelled = [i for i, s in enumerate(speakers) if s is not None]
    unlabelled = len(speakers) - len(labelled)
    groups: dict[str, list[int]] = {}
    for i in labelled:
        groups.setdefault(speakers[i], []).append(i)
    if len(groups) < 2:
        if unlabelled == len(speakers):
            return "no sample has a speaker label (add `speaker` to the manifest rows)"
        return f"{len(groups)} speaker among the {len(labelled)} samples with a speaker label; a swap needs 2"
    rng = random.Random(seed)
    names = sorted(groups)
    rng.shuffle(names)
    order: list[int] = []
    for name in names:
        members = list(groups[name])
        rng.shuffle(members)
        order += members
    n, m = len(order), max(len(g) for g in groups.values())
    donors = {}
    for p, i in enumerate(order):
        if 2 * m <= n:
            donors[i] = order[(p + m) % n]
        else:  # one speaker holds more than half: no cross-speaker permutation exists
            others = [j for j in order if speakers[j] != speakers[i]]
            donors[i] = others[rng.randrange(len(others))]
    indices = sorted(donors)
    return SwapPlan(indices, [donors[i] for i in indices], len(groups), unlabelled)


def build_swapped(layout: LayoutBuilder, own: EncodedRow, donor: EncodedRow, mode: SwapMode) -> VoiceCloningExample:
    """`own`'s target (text, codes, labels, scene) with `donor`'s reference, or the part of it that `mode` names."""
    if mode not in SWAP_MODES:
        raise ValueError(f"swap mode must be one of {SWAP_MODES}, got {mode!r}")
    ref = donor if mode in ("all", "codes") else own
    wave = donor if mode in ("all", "whisper") else own
    return layout.build(
        own.id, ref.ref_text, ref.ref_codes, own.text, own.target_codes, ref_wave_16k=wave.ref_pcm16k, scene=own.scene
    )


class SwappedDataset(Dataset):
    """The samples of `plan` with their donors' references (`mode`); a sample whose own or donor row fails to load
    becomes a `BadSample` naming both, as a failed row does in the other datasets."""

    def __init__(self, dataset: SwappableDataset, layout: LayoutBuilder, plan: SwapPlan, mode: SwapMode) -> None:
        if mode not in SWAP_MODES:
            raise ValueError(f"swap mode must be one of {SWAP_MODES}, got {mode!r}")
        self.dataset, self.layout, self.plan, self.mode = dataset, layout, plan, mode
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.plan.indices)

    def __getitem__(self, k: int) -> VoiceCloningExample | BadSample:
        i, j = self.plan.indices[k], self.plan.donors[k]
        try:
            return build_swapped(self.layout, self.dataset.row(i), self.dataset.row(j), self.mode)
        except Exception as err:  # noqa: BLE001 - one bad row must not stop an evaluation; it is counted instead
            own, donor = self.dataset.row_sizes(i).sample_id, self.dataset.row_sizes(j).sample_id
            return BadSample(own, f"with the reference of {donor} ({self.mode}): {type(err).__name__}: {err}")

    @property
    def lengths(self) -> list[int]:
        """Token count of each swapped example (for eval batching), computed from the rows' sizes."""
        if self._lengths is None:
            self._lengths = [self._length(i, j) for i, j in zip(self.plan.indices, self.plan.donors, strict=True)]
        return self._lengths

    def _length(self, i: int, j: int) -> int:
        sizes = self.dataset.row_sizes
        own, donor = sizes(i), sizes(j)
        ref = donor if self.mode in ("all", "codes") else own
        wave = donor if self.mode in ("all", "whisper") else own
        return self.layout.token_count(
            ref.ref_text, own.text, ref.ref_frames, own.target_frames, wave.ref_samples16k, own.scene
        )


@dataclass(frozen=True)
class RowSizes:
    """A row's id and what its token count depends on, without its codes or waveform."""

    sample_id: str
    ref_text: str
    text: str
    ref_frames: int
    target_frames: int
    ref_samples16k: int
    scene: str | None

    @classmethod
    def of_row(cls, row: EncodedRow) -> RowSizes:
        return cls(row.id, row.ref_text, row.text, int(row.ref_codes.shape[1]), int(row.target_codes.shape[1]),
                   int(row.ref_pcm16k.numel()), row.scene)  # fmt: skip
