"""Prepared-set storage, utterance level: each distinct audio file is encoded and stored once; examples point at it.

A prepared set (format 2) is a folder of:
- `utt-00000.parquet`, ...: one row per distinct audio file of the manifest (in first-use order): its codec codes
  (int16 bytes, [C, T] row-major), duration, 16 kHz length and, for files that are some row's reference in a set
  prepared with `--whisper-pcm yes`, the 16 kHz PCM as lossless FLAC. A file that could not be used holds its reason
  in `error` and no codes. Written atomically: a shard either exists complete or not at all.
- `utterances.parquet`: one row per usable utterance: uid, file, transcript, speaker, language, where it is stored,
  sizes.
- `index.parquet`: one row per example (manifest row that passed): id, texts, speaker, language, scene, the uids of its
  reference and target, and the sizes batching needs without opening any shard.
- `dataset.json` (codec, geometry, settings), `rejects.jsonl`, `summary.json`.
"""

from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch

from data_pipeline.layout.whisper_features import WHISPER_SAMPLE_RATE

FORMAT_VERSION = 2  # dataset.json "format"; sets without it hold one row per example (data_pipeline.prepare.shards)
UTTERANCES_FILE = "utterances.parquet"
PCM_FORMATS = ("flac", "none")  # "int16" only in sets converted from the first format

UTTERANCE_SCHEMA = pa.schema([
    ("uid", pa.int64()), ("num_codebooks", pa.int32()), ("frames", pa.int32()), ("codes", pa.binary()),
    ("seconds", pa.float32()), ("samples16k", pa.int64()), ("pcm16k", pa.binary()), ("pcm_format", pa.string()),
    ("error", pa.string()),
])  # fmt: skip
# What the merge step reads from each shard (not the heavy binary columns; pcm_format is "none" where no PCM is kept).
LIGHT_COLUMNS = ["uid", "frames", "seconds", "samples16k", "pcm_format", "error"]

# Training reads rows in random order and Parquet decodes whole row groups, so groups are kept small: about this many
# bytes each (a few rows when they hold PCM, a few hundred when they hold only codes, where per-group metadata would
# otherwise outweigh the data).
ROW_GROUP_BYTES = 256 * 1024
MAX_GROUP_ROWS = 512


def utterance_shard_name(index: int) -> str:
    return f"utt-{index:05d}.parquet"


@dataclass
class EncodedUtterance:
    """One stored audio file. codes: [C, T] int64 (None if unusable); pcm16k: [S] float32 in [-1, 1], or None."""

    uid: int
    codes: torch.Tensor | None
    seconds: float
    samples16k: int
    pcm16k: torch.Tensor | None = None
    error: str | None = None


def encode_pcm(wave: torch.Tensor | None, pcm_format: str) -> bytes:
    """16 kHz waveform -> stored bytes: 16-bit FLAC (lossless for the int16 samples), or none."""
    if pcm_format == "none" or wave is None:
        return b""
    samples = (wave.clamp(-1, 1) * 32767.0).round().to(torch.int16).numpy()
    buffer = io.BytesIO()
    sf.write(buffer, samples, WHISPER_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_pcm(blob: bytes, pcm_format: str) -> torch.Tensor | None:
    if pcm_format == "none" or not blob:
        return None
    if pcm_format == "flac":
        samples, _ = sf.read(io.BytesIO(blob), dtype="int16")
    else:  # "int16": raw samples, as sets of the first format stored them
        samples = np.frombuffer(blob, dtype=np.int16)
    return torch.from_numpy(samples.astype(np.float32) / 32767.0)


def codes_to_bytes(codes: torch.Tensor) -> bytes:
    return codes.to(torch.int16).numpy().tobytes()


def codes_from_bytes(blob: bytes, num_codebooks: int, frames: int) -> torch.Tensor:
    """-> [C, T] int64."""
    return torch.from_numpy(np.frombuffer(blob, dtype=np.int16).astype(np.int64).reshape(num_codebooks, frames))


def _group_rows(table: pa.Table) -> int:
    return max(1, min(MAX_GROUP_ROWS, round(ROW_GROUP_BYTES * table.num_rows / max(1, table.nbytes))))


def write_table_atomically(table: pa.Table, path: Path, row_group_rows: int | None = None) -> None:
    """Write a Parquet file under a temporary name and rename it: it exists complete or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_rows or _group_rows(table), compression="zstd")
    os.replace(tmp, path)


def write_utterance_shard(path: Path, utterances: list[EncodedUtterance], pcm_format: str) -> None:
    """Write one shard of utterances; `pcm_format` ("flac" or "none") applies to those that carry PCM."""
    if pcm_format not in PCM_FORMATS:
        raise ValueError(f"pcm_format must be one of {PCM_FORMATS}, got {pcm_format!r}")
    cols: dict[str, list] = {name: [] for name in UTTERANCE_SCHEMA.names}
    for u in utterances:
        ok = u.codes is not None
        values = {
            "uid": u.uid, "num_codebooks": u.codes.shape[0] if ok else 0, "frames": u.codes.shape[1] if ok else 0,
            "codes": codes_to_bytes(u.codes) if ok else b"", "seconds": u.seconds, "samples16k": u.samples16k,
            "pcm16k": encode_pcm(u.pcm16k, pcm_format), "pcm_format": pcm_format if u.pcm16k is not None else "none",
            "error": u.error,
        }  # fmt: skip
        for name, value in values.items():
            cols[name].append(value)
    write_table_atomically(pa.table(cols, schema=UTTERANCE_SCHEMA), path)


@dataclass
class StoredUtterance:
    """An utterance as read back. codes [C, T] int64; pcm16k [S] float32 or None when not stored."""

    codes: torch.Tensor
    pcm16k: torch.Tensor | None


class UtteranceShard:
    """Random access to one shard's rows: decodes only the row group that holds a row, caching the last few."""

    def __init__(self, path: Path, cached_groups: int = 4) -> None:
        self.file = pq.ParquetFile(path, memory_map=True)
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = np.cumsum([0, *sizes]).tolist()
        self.cached_groups = cached_groups
        self._groups: dict[int, pa.Table] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def _group(self, g: int) -> pa.Table:
        if g not in self._groups:
            if len(self._groups) >= self.cached_groups:
                self._groups.pop(next(iter(self._groups)))
            self._groups[g] = self.file.read_row_group(g)
        return self._groups[g]

    def read(self, i: int) -> StoredUtterance:
        if not 0 <= i < self.starts[-1]:
            raise IndexError(f"row {i} out of range: {self.starts[-1]} rows in this shard")
        g = bisect.bisect_right(self.starts, i) - 1
        table, offset = self._group(g), i - self.starts[g]
        get = {name: table.column(name)[offset].as_py() for name in ("num_codebooks", "frames", "codes", "pcm16k",
                                                                       "pcm_format", "error")}  # fmt: skip
        if get["error"] is not None:
            raise ValueError(f"stored utterance is unusable: {get['error']}")
        return StoredUtterance(
            codes_from_bytes(get["codes"], get["num_codebooks"], get["frames"]),
            decode_pcm(get["pcm16k"], get["pcm_format"]),
        )
