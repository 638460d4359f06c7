"""Training-time reader of a prepared dataset (`data_pipeline.prepare` output, `data_pipeline.prepare.utterance_store`
format).

Lengths come from the indexes, so token-budget batching needs no shard reads. Examples are built on demand in
DataLoader workers from memory-mapped utterance shards (an example reads its target and its reference). A row that
fails to load becomes a `BadSample` (id + reason) instead of raising:
the collator drops it and the trainer counts it, stopping only past `data.max_bad_fraction`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from data_pipeline.errors import InputError
from data_pipeline.ingest.manifest import Reject
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.loading.reference_choice import KEEP_PREPARED, ReferenceDraws, ReferencePolicy
from data_pipeline.loading.reference_swap import RowSizes
from data_pipeline.prepare.columns import read_columns
from data_pipeline.prepare.count_cache import cached_counts, file_digest, layout_digest
from data_pipeline.prepare.shards import (
    INDEX_FILE,
    REJECTS_FILE,
    EncodedRow,
    not_a_prepared_set,
    read_prepared_meta,
)
from data_pipeline.prepare.utterance_store import (
    FORMAT_VERSION,
    UTTERANCES_FILE,
    StoredUtterance,
    UtteranceShard,
    utterance_shard_name,
)
from data_pipeline.types import BadSample, VoiceCloningExample

OPEN_SHARDS = 64  # open shard files per process (metadata only: rows are read one row group at a time)
CONVERT_COMMAND = "python -m data_pipeline.prepare.convert_prepared"


class PreparedDataset(Dataset):
    def __init__(self, root: str | Path, layout: LayoutBuilder, reference: ReferencePolicy | None = None) -> None:
        """`reference`: how examples choose their reference (default: the prepared pairing). With `same_speaker`,
        indices carry the epoch (`dataset[(i, epoch)]`, see `needs_epoch`), `lengths` are upper bounds over the
        references an example may take and `epoch_lengths(epoch)` the lengths of the pairs drawn for that epoch."""
        self.root = Path(root)
        self.meta = read_prepared_meta(self.root)
        if self.meta.get("format") != FORMAT_VERSION:
            raise InputError(
                f"{self.root} is a prepared set of the first format (one row per example, references stored per "
                f"row): convert it once with {CONVERT_COMMAND} {self.root} NEW_FOLDER, or prepare it again"
            )
        for name in (INDEX_FILE, UTTERANCES_FILE):
            if not (self.root / name).is_file():
                raise not_a_prepared_set(self.root, f"it has no {name} (the prepare run did not finish; run it again)")
        geo = layout.geometry
        if (self.meta["num_codebooks"], self.meta["codebook_size"]) != (geo.num_codebooks, geo.codec_codebook_size):
            raise InputError(
                f"{self.root} holds {self.meta['num_codebooks']} x {self.meta['codebook_size']} codes but the run's "
                f"codec gives {geo.num_codebooks} x {geo.codec_codebook_size}: use the codec the set was prepared "
                "with, or prepare it again with this one"
            )
        if self.meta.get("reference_pcm") == "none" and layout.options.whisper:
            raise InputError(
                f"{self.root} was prepared with --whisper-pcm no (no reference audio for the Whisper tower) but this "
                "run has whisper.enabled=true: prepare it again with --whisper-pcm yes, or set whisper.enabled=false"
            )
        self.layout = layout
        # Columns, not Python lists: DataLoader workers share them (data_pipeline/prepare/columns.py)
        self.index = read_columns(self.root / INDEX_FILE)
        self.utterances = read_columns(self.root / UTTERANCES_FILE)
        self._uid_order = np.argsort(self.utterances["uid"], kind="stable")
        self._sorted_uids = self.utterances["uid"][self._uid_order]
        self._digests: dict[str, str] = {}  # what saved token counts depend on, each hashed once
        self.lengths = self._counts("examples", INDEX_FILE, len(self.index["id"]), self._example_counts).tolist()
        rejects_path = self.root / REJECTS_FILE
        self.rejects = [
            Reject(**json.loads(line)) for line in rejects_path.read_text().splitlines() if line
        ] if rejects_path.is_file() else []  # fmt: skip
        self._shards: dict[int, UtteranceShard] = {}
        self.reference = reference or ReferencePolicy()
        self.draws: ReferenceDraws | None = None
        if self.reference.mode != "fixed":
            self._setup_draws()

    @property
    def needs_epoch(self) -> bool:
        """Whether the reference depends on the epoch (the sampler then yields (index, epoch) keys)."""
        return self.draws is not None

    def _setup_draws(self) -> None:
        """Donors, and the token counts an example has without a reference and each donor adds as one (the
        reference's text, codes and Whisper span add to the rest independently)."""
        u, x, layout = self.utterances, self.index, self.layout
        donors = np.flatnonzero(u["has_pcm"] | (not layout.options.whisper))
        speakers = u["speaker"].tolist()
        self.draws = ReferenceDraws(
            x["speaker"].tolist(), x["target_uid"], u["uid"][donors], [speakers[k] for k in donors],
            u["seconds"][donors], self.reference,
        )  # fmt: skip
        bare = partial(self._example_counts, with_reference=False)
        self._bare = self._counts("without-reference", INDEX_FILE, len(x["id"]), bare)
        self._own_part = np.array(self.lengths, dtype=np.int64) - self._bare
        parts = self._counts("reference-parts", UTTERANCES_FILE, len(u["uid"]), self._reference_parts)
        self._part = dict(zip(u["uid"][donors].tolist(), parts[donors].tolist(), strict=True))
        # Upper bounds for the sampler's fit check: per speaker, not per example's candidate list (O(N), not N x S).
        self.lengths = (self._bare + np.maximum(self._own_part, self.draws.speaker_max(self._part))).tolist()

    def _counts(self, name: str, file: str, size: int, count) -> np.ndarray:
        """Token counts of the rows of `file` that `count` gives, saved beside the set for later starts."""
        if "layout" not in self._digests:
            self._digests["layout"] = layout_digest(self.layout)
        if file not in self._digests:
            self._digests[file] = file_digest(self.root / file)
        return cached_counts(self.root, name, [self._digests["layout"], self._digests[file]], size, count)

    def _example_counts(self, indices: np.ndarray, with_reference: bool = True) -> list[int]:
        """Token counts of examples `indices` with their prepared references, or without any reference (no text,
        codes or Whisper span)."""
        x, n = self.index, len(indices)
        if with_reference:
            ref_texts, ref_frames = x["ref_text"].take(indices), x["ref_frames"][indices].tolist()
            ref_samples = x["ref_samples16k"][indices].tolist()
        else:
            ref_texts, ref_frames, ref_samples = [""] * n, [0] * n, [0] * n
        return self.layout.token_counts(
            ref_texts, x["text"].take(indices), ref_frames, x["target_frames"][indices].tolist(), ref_samples,
            x["scene"].take(indices),
        )  # fmt: skip

    def _reference_parts(self, indices: np.ndarray) -> list[int]:
        """Tokens utterances `indices` add to an example as its reference (text, codes, Whisper span)."""
        u, zeros, nones = self.utterances, [0] * len(indices), [None] * len(indices)
        empty = self.layout.token_count("", "", 0, 0, 0, None)
        counts = self.layout.token_counts(u["text"].take(indices), [""] * len(indices), u["frames"][indices].tolist(),
                                          zeros, u["samples16k"][indices].tolist(), nones)  # fmt: skip
        return [c - empty for c in counts]

    def epoch_lengths(self, epoch: int) -> list[int]:
        """Each example's token count with the reference drawn for `epoch` (what token-budget batching packs)."""
        if self.draws is None:
            return self.lengths
        drawn = self.draws.epoch(epoch)
        parts = np.array([self._part[v] if v != KEEP_PREPARED else 0 for v in drawn.tolist()], dtype=np.int64)
        return (self._bare + np.where(drawn == KEEP_PREPARED, self._own_part, parts)).tolist()

    def __len__(self) -> int:
        return len(self.lengths)

    def _position(self, uid: int) -> int:
        """The row of utterance `uid` in utterances.parquet; KeyError if the set has no such utterance."""
        at = int(np.searchsorted(self._sorted_uids, uid))
        if at == len(self._sorted_uids) or self._sorted_uids[at] != uid:
            raise KeyError(f"utterance {uid} is not in {self.root / UTTERANCES_FILE}")
        return int(self._uid_order[at])

    def _utterance(self, uid: int) -> StoredUtterance:
        k = self._position(uid)
        shard, row = int(self.utterances["shard"][k]), int(self.utterances["row"][k])
        if shard not in self._shards:
            if len(self._shards) >= OPEN_SHARDS:  # least recently opened first
                self._shards.pop(next(iter(self._shards)))
            self._shards[shard] = UtteranceShard(self.root / utterance_shard_name(shard), cached_groups=2)
        return self._shards[shard].read(row)

    def row(self, i: int) -> EncodedRow:
        """Example i with its prepared reference (raises if it cannot be read)."""
        x = self.index
        ref, target = self._utterance(int(x["ref_uid"][i])), self._utterance(int(x["target_uid"][i]))
        return EncodedRow(
            id=x["id"][i], line=int(x["line"][i]), ref_text=x["ref_text"][i], text=x["text"][i], ref_codes=ref.codes,
            target_codes=target.codes, ref_pcm16k=ref.pcm16k, ref_seconds=float(x["ref_seconds"][i]),
            target_seconds=float(x["target_seconds"][i]), speaker=x["speaker"][i], scene=x["scene"][i],
        )  # fmt: skip

    def row_sizes(self, i: int) -> RowSizes:
        x = self.index
        return RowSizes(x["id"][i], x["ref_text"][i], x["text"][i], int(x["ref_frames"][i]),
                        int(x["target_frames"][i]), int(x["ref_samples16k"][i]), x["scene"][i])  # fmt: skip

    @property
    def speakers(self) -> list[str | None]:
        """Each example's `speaker` (None where the manifest row had none)."""
        return self.index["speaker"].tolist()

    def reference_uid(self, i: int, epoch: int) -> int:
        """The uid of the utterance example i is cloned from in `epoch`."""
        drawn = KEEP_PREPARED if self.draws is None else int(self.draws.epoch(epoch)[i])
        return int(self.index["ref_uid"][i]) if drawn == KEEP_PREPARED else drawn

    def __getitem__(self, key: int | tuple[int, int]) -> VoiceCloningExample | BadSample:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        x = self.index
        try:
            uid = self.reference_uid(i, epoch)
            ref_text = x["ref_text"][i] if uid == x["ref_uid"][i] else self.utterances["text"][self._position(uid)]
            ref, target = self._utterance(uid), self._utterance(int(x["target_uid"][i]))
            return self.layout.build(x["id"][i], ref_text, ref.codes, x["text"][i], target.codes,
                                     ref_wave_16k=ref.pcm16k, scene=x["scene"][i])  # fmt: skip
        except Exception as err:  # noqa: BLE001 - one bad row must never kill a run; it is counted instead
            return BadSample(x["id"][i], f"{type(err).__name__}: {err}")
