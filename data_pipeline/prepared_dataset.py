"""Training-time reader of a prepared dataset (`data_pipeline.prepare` output).

Lengths come from the index, so token-budget batching needs no shard reads. Examples are built on demand in DataLoader
workers from memory-mapped shards. A row that fails to load becomes a `BadSample` (id + reason) instead of raising:
the collator drops it and the trainer counts it, stopping only past `data.max_bad_fraction`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from data_pipeline.errors import InputError
from data_pipeline.layout import LayoutBuilder
from data_pipeline.manifest import Reject
from data_pipeline.reference_choice import ReferencePolicy, ReferencePool
from data_pipeline.reference_swap import RowSizes
from data_pipeline.shards import (
    DATASET_FILE,
    INDEX_FILE,
    REJECTS_FILE,
    EncodedRow,
    ShardReader,
    row_from_table,
    shard_name,
)
from data_pipeline.types import BadSample, VoiceCloningExample

OPEN_SHARDS = 64  # open shard files per process (metadata only: rows are read one row group at a time)
# Decoded row groups kept per process. Tiny with today's 4-row groups; shards written before them are one group each,
# and this bound keeps their memory to two decoded shards, as it always was.
CACHED_GROUPS = 2


def _not_prepared(root: Path, why: str) -> InputError:
    return InputError(f"{root} is not a prepared set: {why}; make one with python -m data_pipeline.prepare")


def read_prepared_meta(root: str | Path) -> dict:
    """A prepared set's dataset.json; InputError naming the folder and the missing or unreadable file otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise _not_prepared(root, "no such folder")
    path = root / DATASET_FILE
    if not path.is_file():
        raise _not_prepared(root, f"it has no {DATASET_FILE}")
    try:
        meta = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError too
        raise _not_prepared(root, f"{path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _not_prepared(root, f"{path} is not a JSON object")
    return meta


class PreparedDataset(Dataset):
    def __init__(self, root: str | Path, layout: LayoutBuilder, reference: ReferencePolicy | None = None) -> None:
        """`reference`: how examples choose their reference (default: the prepared pairing). With `same_speaker`,
        `lengths` are upper bounds over the references an example may take, so token budgets hold whatever is drawn,
        and indices carry the epoch: `dataset[(i, epoch)]` (see `needs_epoch`)."""
        self.root = Path(root)
        self.meta = read_prepared_meta(self.root)
        if not (self.root / INDEX_FILE).is_file():
            raise _not_prepared(self.root, f"it has no {INDEX_FILE} (the prepare run did not finish; run it again)")
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
        index = pq.read_table(self.root / INDEX_FILE).to_pydict()
        self.index = index
        self.lengths = [
            layout.token_count(rt, t, rf, tf, rs, sc)
            for rt, t, rf, tf, rs, sc in zip(
                index["ref_text"], index["text"], index["ref_frames"], index["target_frames"],
                index["ref_samples16k"], index["scene"], strict=True,
            )
        ]  # fmt: skip
        rejects_path = self.root / REJECTS_FILE
        self.rejects = [
            Reject(**json.loads(line)) for line in rejects_path.read_text().splitlines() if line
        ] if rejects_path.is_file() else []  # fmt: skip
        self._readers: dict[int, ShardReader] = {}
        self._groups: dict[tuple[int, int], pa.Table] = {}
        self._speakers: list[str | None] | None = None
        self.reference = reference or ReferencePolicy()
        self.pool: ReferencePool | None = None
        if self.reference.mode != "fixed":
            self.pool = ReferencePool(self.speakers, index["ref_seconds"], self.reference)
            self.lengths = self._length_bounds()

    @property
    def needs_epoch(self) -> bool:
        """Whether the reference depends on the epoch (the sampler then yields (index, epoch) keys)."""
        return self.pool is not None

    def _length_bounds(self) -> list[int]:
        """Each example's longest token count over the references it may take: the reference's tokens (its text,
        codes and Whisper span) add to the rest independently, so bound = tokens without a reference + the largest
        reference part among the candidates."""
        x, layout = self.index, self.layout
        bare = [
            layout.token_count("", t, 0, tf, 0, sc)
            for t, tf, sc in zip(x["text"], x["target_frames"], x["scene"], strict=True)
        ]
        part = [full - empty for full, empty in zip(self.lengths, bare, strict=True)]
        return [bare[i] + max(part[j] for j in {i, *self.pool.candidates(i)}) for i in range(len(bare))]

    def __len__(self) -> int:
        return len(self.lengths)

    def _shard(self, shard: int) -> ShardReader:
        if shard not in self._readers:
            if len(self._readers) >= OPEN_SHARDS:  # least recently opened first
                self._readers.pop(next(iter(self._readers)))
            self._readers[shard] = ShardReader(self.root / shard_name(shard))
        return self._readers[shard]

    def _row(self, shard: int, i: int) -> EncodedRow:
        reader = self._shard(shard)
        group, offset = reader.locate(i)
        if (shard, group) not in self._groups:
            if len(self._groups) >= CACHED_GROUPS:
                self._groups.pop(next(iter(self._groups)))
            self._groups[shard, group] = reader.file.read_row_group(group)
        return row_from_table(self._groups[shard, group], offset)

    def row(self, i: int) -> EncodedRow:
        """Example i's stored row (raises if it cannot be read)."""
        return self._row(self.index["shard"][i], self.index["row"][i])

    def row_sizes(self, i: int) -> RowSizes:
        x = self.index
        return RowSizes(x["id"][i], x["ref_text"][i], x["text"][i], x["ref_frames"][i], x["target_frames"][i],
                        x["ref_samples16k"][i], x["scene"][i])  # fmt: skip

    @property
    def speakers(self) -> list[str | None]:
        """Each example's `speaker` (None where the manifest row had none): one small column read per shard, once."""
        if self._speakers is None:
            columns = {
                shard: pq.read_table(self.root / shard_name(shard), columns=["speaker"]).column(0).to_pylist()
                for shard in sorted(set(self.index["shard"]))
            }
            self._speakers = [columns[s][r] for s, r in zip(self.index["shard"], self.index["row"], strict=True)]
        return self._speakers

    def __getitem__(self, key: int | tuple[int, int]) -> VoiceCloningExample | BadSample:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        sample_id = self.index["id"][i]
        try:
            row = self.row(i)
            ref = self._reference(i, epoch, row)
            return self.layout.build(
                row.id, ref.ref_text, ref.ref_codes, row.text, row.target_codes, ref_wave_16k=ref.ref_pcm16k,
                scene=row.scene,
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001 - one bad row must never kill a run; it is counted instead
            return BadSample(sample_id, f"{type(err).__name__}: {err}")

    def _reference(self, i: int, epoch: int, row: EncodedRow) -> EncodedRow:
        """The row whose reference example i takes in `epoch`: never one holding i's own target audio."""
        if self.pool is None:
            return row
        for j in self.pool.order(i, epoch):
            donor = row if j == i else self.row(j)
            same_audio = donor.ref_codes.shape == row.target_codes.shape and bool(
                (donor.ref_codes == row.target_codes).all()
            )
            if not same_audio:
                return donor
        return row
