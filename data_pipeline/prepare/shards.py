"""Prepared-dataset storage of the first format (one row per example, each holding its reference), read to convert
such sets (`data_pipeline.prepare.convert_prepared`); `EncodedRow` is also what an example with its reference is in
memory.

A shard (`shard-00000.parquet`) holds, per row: id, speaker, scene, ref_text, text, the reference and target codec
codes (int16 bytes, [C, T] row-major, with their frame counts), the 16 kHz reference PCM for Whisper (lossless FLAC,
or nothing when the set is prepared with `--whisper-pcm no`; sets written before store raw int16), and durations.
`index.parquet` has one row per example: shard, row within shard, id, frame counts, sample counts and durations
(what batching needs without opening the shards). Files are written to a temporary name and renamed, so a shard
either exists complete or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_pipeline.errors import InputError
from data_pipeline.layout.whisper_features import WHISPER_SAMPLE_RATE
from data_pipeline.prepare.utterance_store import PCM_FORMATS, decode_pcm, encode_pcm

SHARD_SCHEMA = pa.schema([
    ("id", pa.string()), ("line", pa.int64()), ("speaker", pa.string()), ("scene", pa.string()),
    ("ref_text", pa.string()), ("text", pa.string()),
    ("num_codebooks", pa.int32()), ("ref_frames", pa.int32()), ("target_frames", pa.int32()),
    ("ref_codes", pa.binary()), ("target_codes", pa.binary()),
    ("ref_pcm16k", pa.binary()), ("ref_samples16k", pa.int64()),
    ("ref_seconds", pa.float32()), ("target_seconds", pa.float32()), ("ref_pcm_format", pa.string()),
])  # fmt: skip
# What batching needs without opening the shards (texts included: token counts depend on the tokenizer).
INDEX_COLUMNS = [
    "id", "line", "ref_text", "text", "scene", "ref_frames", "target_frames", "ref_samples16k", "ref_seconds",
    "target_seconds",
]  # fmt: skip


# The files of a prepared set besides its shards.
DATASET_FILE = "dataset.json"  # codec, geometry and settings the set was prepared with
INDEX_FILE = "index.parquet"  # one row per example: what batching needs without opening the shards
REJECTS_FILE = "rejects.jsonl"  # every manifest row that did not become an example, with its reason

# Training reads rows in random order and Parquet decodes whole row groups: with small groups one row costs ~1 ms to
# read instead of the whole shard's ~0.6 ms per row (measured on a 60 MB, 200-row shard), for ~1 % more disk.
ROW_GROUP_ROWS = 4


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


@dataclass
class EncodedRow:
    """One prepared example. codes: [C, T] int64; ref_pcm16k: [S] float32 in [-1, 1], None when not stored."""

    id: str
    line: int
    ref_text: str
    text: str
    ref_codes: torch.Tensor
    target_codes: torch.Tensor
    ref_pcm16k: torch.Tensor | None
    ref_seconds: float
    target_seconds: float
    speaker: str | None = None
    scene: str | None = None


def _samples16k(row: EncodedRow) -> int:
    """The reference's length at 16 kHz (Whisper's token count follows it, whether or not the PCM is kept)."""
    return row.ref_pcm16k.numel() if row.ref_pcm16k is not None else round(row.ref_seconds * WHISPER_SAMPLE_RATE)


def write_shard(path: Path, rows: list[EncodedRow], pcm_format: str = "flac") -> None:
    """Write rows atomically (temp file + rename); `pcm_format` is one of PCM_FORMATS."""
    if pcm_format not in PCM_FORMATS:
        raise ValueError(f"pcm_format must be one of {PCM_FORMATS}, got {pcm_format!r}")
    cols: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    for r in rows:
        values = {
            "id": r.id, "line": r.line, "speaker": r.speaker, "scene": r.scene, "ref_text": r.ref_text,
            "text": r.text, "num_codebooks": r.target_codes.shape[0], "ref_frames": r.ref_codes.shape[1],
            "target_frames": r.target_codes.shape[1],
            "ref_codes": r.ref_codes.to(torch.int16).numpy().tobytes(),
            "target_codes": r.target_codes.to(torch.int16).numpy().tobytes(),
            "ref_pcm16k": encode_pcm(r.ref_pcm16k, pcm_format), "ref_samples16k": _samples16k(r),
            "ref_seconds": r.ref_seconds, "target_seconds": r.target_seconds, "ref_pcm_format": pcm_format,
        }  # fmt: skip
        for name, value in values.items():
            cols[name].append(value)
    table = pa.table(cols, schema=SHARD_SCHEMA)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, path)


def row_from_table(table: pa.Table, i: int) -> EncodedRow:
    get = {name: table.column(name)[i].as_py() for name in table.column_names}
    c = get["num_codebooks"]

    def codes(blob: bytes, frames: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(blob, dtype=np.int16).astype(np.int64).reshape(c, frames))

    pcm = decode_pcm(get["ref_pcm16k"], get.get("ref_pcm_format") or "int16")
    return EncodedRow(
        id=get["id"], line=get["line"], ref_text=get["ref_text"], text=get["text"],
        ref_codes=codes(get["ref_codes"], get["ref_frames"]),
        target_codes=codes(get["target_codes"], get["target_frames"]),
        ref_pcm16k=pcm, ref_seconds=get["ref_seconds"], target_seconds=get["target_seconds"],
        speaker=get["speaker"], scene=get["scene"],
    )  # fmt: skip


def shard_index(path: Path) -> pa.Table:
    """The index columns of one shard (without the heavy binary columns)."""
    return pq.read_table(path, columns=INDEX_COLUMNS)


def not_a_prepared_set(root: Path, why: str) -> InputError:
    return InputError(f"{root} is not a prepared set: {why}; make one with python -m data_pipeline.prepare")


def read_prepared_meta(root: str | Path) -> dict:
    """A prepared set's dataset.json; InputError naming the folder and the missing or unreadable file otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise not_a_prepared_set(root, "no such folder")
    path = root / DATASET_FILE
    if not path.is_file():
        raise not_a_prepared_set(root, f"it has no {DATASET_FILE}")
    try:
        meta = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError too
        raise not_a_prepared_set(root, f"{path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise not_a_prepared_set(root, f"{path} is not a JSON object")
    return meta
