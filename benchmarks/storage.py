"""Bytes on disk per hour of target audio of a prepared set: the reference PCM as raw int16 (the format before), as
FLAC (`--whisper-pcm yes`, today's default) and not stored (`--whisper-pcm no`), on one corpus encoded with the tiny
Higgs codec (the published 8-codebook, 25 frames/s geometry, so the codes weigh what real ones do).

    python -m benchmarks.storage
"""

from __future__ import annotations

import json
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks._corpus import bench_corpus
from data_pipeline.codecs import tiny_higgs
from data_pipeline.prepare import PrepareConfig, prepare
from data_pipeline.shards import ROW_GROUP_ROWS, SHARD_SCHEMA, row_from_table, shard_name


def _as_int16_shards(src, dst, shards: int) -> int:
    """Rewrite the shards with raw int16 reference PCM (the format before FLAC) -> their bytes on disk."""
    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for k in range(shards):
        table = pq.read_table(src / shard_name(k))
        pcm = [row_from_table(table, i).ref_pcm16k for i in range(table.num_rows)]
        columns = {name: table.column(name) for name in SHARD_SCHEMA.names if name != "ref_pcm_format"}
        columns["ref_pcm16k"] = pa.array([(p * 32767).round().to(torch.int16).numpy().tobytes() for p in pcm])
        pq.write_table(pa.table(columns), dst / shard_name(k), row_group_size=ROW_GROUP_ROWS)
        total += (dst / shard_name(k)).stat().st_size
    return total


def main() -> None:
    manifest, _, scratch = bench_corpus()
    codec_dir = scratch.parent / "tiny_higgs"
    if not (codec_dir / "config.json").is_file():
        tiny_higgs(0).save_pretrained(str(codec_dir))
    results = {}
    for pcm in ("yes", "no"):
        out = scratch.parent / f"storage_{pcm}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = prepare(PrepareConfig(str(manifest), "higgs", str(codec_dir), str(out), 64, whisper_pcm=pcm),
                          show_progress=False)  # fmt: skip
        results[pcm] = (summary, out, time.perf_counter() - started)
    summary, out, _ = results["yes"]
    hours = summary["target_hours"]
    old = _as_int16_shards(out, scratch.parent / "storage_int16", summary["shards"])
    rows = {
        "int16 PCM (before)": old,
        "FLAC PCM (--whisper-pcm yes)": summary["shard_bytes"],
        "no PCM (--whisper-pcm no)": results["no"][0]["shard_bytes"],
    }
    print(f"{summary['examples']} examples, {hours * 60:.1f} min of target audio, tiny Higgs codec (8 x 1024, 25 Hz)")
    for name, size in rows.items():
        print(f"{name:30s} {size / 1e6:8.2f} MB  {size / 1e6 / hours:8.1f} MB per hour of target audio  "
              f"({old / size:.1f}x smaller than int16)")  # fmt: skip
    print(json.dumps({k: round(v / 1e6 / hours, 2) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
