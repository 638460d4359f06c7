"""Convert a prepared set of the first format (one row per example, each row holding its reference) to the utterance
format (`data_pipeline.prepare.utterance_store`), without the audio files or the codec: the stored codes and PCM are
moved.

    python -m data_pipeline.prepare.convert_prepared OLD_FOLDER NEW_FOLDER

An audio file is recognised by its codes (a file used in several rows was encoded once, so its codes are equal
everywhere). Two passes over the old shards, one row group at a time: the first numbers the distinct utterances and
notes which serve as references, the second writes each once (with its PCM when it is some row's reference).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from data_pipeline.errors import DATA_ERRORS, InputError, UsageError, run_cli
from data_pipeline.layout.whisper_features import WHISPER_SAMPLE_RATE
from data_pipeline.prepare.build_set import storage_summary, write_set_indexes
from data_pipeline.prepare.shards import (
    DATASET_FILE,
    INDEX_FILE,
    REJECTS_FILE,
    read_prepared_meta,
    row_from_table,
    shard_name,
)
from data_pipeline.prepare.utterance_store import (
    FORMAT_VERSION,
    EncodedUtterance,
    utterance_shard_name,
    write_utterance_shard,
)
from data_pipeline.progress import Progress


def _digest(blob: bytes, frames: int) -> bytes:
    return hashlib.blake2b(blob + frames.to_bytes(8, "little"), digest_size=16).digest()


def _old_shards(root: Path) -> list[int]:
    index = pq.read_table(root / INDEX_FILE, columns=["shard"]).column(0).to_pylist()
    return sorted(set(index))


def convert(old: str | Path, new: str | Path, utterances_per_shard: int = 512, show_progress: bool = True) -> dict:
    """Write the utterance-format copy of `old` into `new` -> the new set's summary."""
    old, new = Path(old), Path(new)
    meta = read_prepared_meta(old)
    if meta.get("format") == FORMAT_VERSION:
        raise UsageError(f"{old} is already in the utterance format; nothing to convert")
    if not (old / INDEX_FILE).is_file():
        raise InputError(f"{old} has no {INDEX_FILE}: its prepare run did not finish; finish it first")
    if new.exists() and any(new.iterdir()):
        raise UsageError(f"{new} is not empty; convert into a new folder")
    new.mkdir(parents=True, exist_ok=True)
    shards = _old_shards(old)
    uid_of: dict[bytes, int] = {}
    is_reference: set[int] = set()
    for k in shards:  # pass 1: number the distinct utterances in first-use order
        table = pq.read_table(old / shard_name(k), columns=["ref_codes", "ref_frames", "target_codes", "target_frames"])
        for blob_r, fr, blob_t, ft in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            ref = uid_of.setdefault(_digest(blob_r, fr), len(uid_of))
            uid_of.setdefault(_digest(blob_t, ft), len(uid_of))
            is_reference.add(ref)
    pcm_format = "none" if meta.get("reference_pcm") == "none" else "flac"
    buffer: list[EncodedUtterance] = []
    where: dict[int, tuple[int, int]] = {}
    placed: set[int] = set()
    utterances: dict[int, dict] = {}
    examples: list[dict] = []
    written = 0

    def flush() -> None:
        nonlocal written, buffer
        write_utterance_shard(new / utterance_shard_name(written), buffer, pcm_format)
        for row, u in enumerate(buffer):
            where[u.uid] = (written, row)
        written, buffer = written + 1, []

    bar = Progress(len(uid_of), "convert", "utt", show_progress)
    for k in shards:  # pass 2: write each utterance once, with its PCM if it is a reference
        file = pq.ParquetFile(old / shard_name(k), memory_map=True)
        for g in range(file.num_row_groups):
            table = file.read_row_group(g)
            blobs = {c: table.column(c).to_pylist() for c in ("ref_codes", "ref_frames", "target_codes",
                                                              "target_frames")}  # fmt: skip
            for i in range(table.num_rows):
                row = row_from_table(table, i)
                ref = uid_of[_digest(blobs["ref_codes"][i], blobs["ref_frames"][i])]
                target = uid_of[_digest(blobs["target_codes"][i], blobs["target_frames"][i])]
                for uid, codes, seconds, text, role in (
                    (ref, row.ref_codes, row.ref_seconds, row.ref_text, "reference"),
                    (target, row.target_codes, row.target_seconds, row.text, "target"),
                ):
                    entry = utterances.setdefault(uid, {"uid": uid, "path": f"{row.id}#{role}",
                                                        "text": text, "speaker": row.speaker, "frames": codes.shape[1],
                                                        "seconds": seconds})  # fmt: skip
                    if role == "target" and not entry.get("from_target"):
                        entry.update(text=text, from_target=True)
                    # Written where it is first seen in the role that carries its PCM (or as a target, if never a ref)
                    wanted = role == "reference" or uid not in is_reference
                    if wanted and uid not in placed:
                        placed.add(uid)
                        pcm = row.ref_pcm16k if role == "reference" and pcm_format != "none" else None
                        samples = pcm.numel() if pcm is not None else round(seconds * WHISPER_SAMPLE_RATE)
                        entry.update(samples16k=samples, has_pcm=pcm is not None)
                        buffer.append(EncodedUtterance(uid, codes, seconds, samples, pcm))
                        bar.update(1)
                        if len(buffer) >= utterances_per_shard:
                            flush()
                examples.append({
                    "id": row.id, "line": row.line, "speaker": row.speaker, "scene": row.scene,
                    "ref_text": row.ref_text, "text": row.text, "ref_uid": ref, "target_uid": target,
                    "ref_frames": row.ref_codes.shape[1], "target_frames": row.target_codes.shape[1],
                    "ref_samples16k": utterances[ref].get("samples16k", 0), "ref_seconds": row.ref_seconds,
                    "target_seconds": row.target_seconds,
                })  # fmt: skip
    if buffer:
        flush()
    bar.close()
    for e in examples:  # a reference seen first as a target learns its 16 kHz length in a later row
        e["ref_samples16k"] = utterances[e["ref_uid"]]["samples16k"]
    rows = [
        {**{k: v for k, v in u.items() if k != "from_target"}, "shard": where[uid][0], "row": where[uid][1]}
        for uid, u in sorted(utterances.items())
    ]
    rejects = (old / REJECTS_FILE).read_text().splitlines() if (old / REJECTS_FILE).is_file() else []
    write_set_indexes(new, examples, rows, [line for line in rejects if line])
    (new / DATASET_FILE).write_text(json.dumps({**meta, "format": FORMAT_VERSION, "converted_from": str(old)},
                                               indent=2))  # fmt: skip
    summary = {"examples": len(examples), "rejected": len(rejects), "shards": written, "utterances": len(rows),
               **storage_summary(new, examples, written)}  # fmt: skip
    (new / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, DATA_ERRORS)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.prepare.convert_prepared", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("old", help="prepared set of the first format")
    parser.add_argument("new", help="new (empty or missing) folder for the utterance-format set")
    parser.add_argument("--utterances-per-shard", type=int, default=512)
    parser.add_argument("--traceback", action="store_true", help="on an expected error, show the full traceback")
    args = parser.parse_args(argv)
    summary = convert(args.old, args.new, args.utterances_per_shard)
    print(f"converted {summary['examples']} examples ({summary['utterances']} distinct utterances) into "
          f"{summary['shards']} shards, {summary['shard_bytes'] / 1e6:.1f} MB ({summary['mb_per_target_hour']} MB per "
          f"hour of target audio); old set kept at {args.old} (delete it once the new one trains)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
