"""Bytes on disk per hour of target audio of a prepared set, one corpus, four ways: the first format (one row per
example, each holding its reference's codes and PCM) with raw int16 PCM, with FLAC PCM and with no PCM, and the
utterance format (each distinct file once) with and without PCM. The corpus is encoded with the tiny Higgs codec (the
published 8-codebook, 25 frames/s geometry, so the codes weigh what real ones do).

    python -m benchmarks.storage [--speakers 8]
"""

from __future__ import annotations

import argparse
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks._corpus import REPO
from data_pipeline.codecs import load_codec, tiny_higgs
from data_pipeline.demo.corpus import make_demo_corpus
from data_pipeline.ingest.manifest import read_manifest
from data_pipeline.ingest.validation import Limits
from data_pipeline.prepare.build_set import PrepareConfig, prepare
from data_pipeline.prepare.encode_rows import encode_rows
from data_pipeline.prepare.shards import ROW_GROUP_ROWS, SHARD_SCHEMA, shard_index, write_shard


def first_format_bytes(rows, out, pcm: str) -> int:
    """Shard + index bytes of the first format ("int16", "flac" or "none" reference PCM), 64 rows per shard."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total = 0
    for k in range(0, len(rows), 64):
        path = out / f"shard-{k // 64:05d}.parquet"
        write_shard(path, rows[k : k + 64], "none" if pcm == "none" else "flac")
        if pcm == "int16":  # the format before FLAC: raw samples, no format column
            table = pq.read_table(path)
            raw = [(r.ref_pcm16k.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
                   for r in rows[k : k + 64]]  # fmt: skip
            columns = {n: table.column(n) for n in SHARD_SCHEMA.names if n != "ref_pcm_format"}
            pq.write_table(pa.table({**columns, "ref_pcm16k": pa.array(raw, pa.binary())}), path,
                           row_group_size=ROW_GROUP_ROWS)  # fmt: skip
        pq.write_table(shard_index(path), out / f"index-{k // 64}.parquet")
        total += path.stat().st_size + (out / f"index-{k // 64}.parquet").stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--speakers", type=int, default=8)
    args = parser.parse_args()
    root = REPO / "runs" / "bench_storage"
    manifest = make_demo_corpus(root / "corpus", num_speakers=args.speakers)
    codec_dir = root / "tiny_higgs"
    if not (codec_dir / "config.json").is_file():
        tiny_higgs(0).save_pretrained(str(codec_dir))
    rows, _ = read_manifest(manifest)
    encoded, _ = encode_rows(rows, load_codec("higgs", str(codec_dir), "cpu"), Limits(), str(manifest))
    hours = sum(r.target_seconds for r in encoded) / 3600
    sizes = {f"first format, {pcm} PCM": first_format_bytes(encoded, root / f"first_{pcm}", pcm)
             for pcm in ("int16", "flac", "none")}  # fmt: skip
    for pcm in ("yes", "no"):
        out = root / f"utterances_{pcm}"
        shutil.rmtree(out, ignore_errors=True)
        summary = prepare(PrepareConfig(str(manifest), "higgs", str(codec_dir), str(out), 512, whisper_pcm=pcm),
                          show_progress=False)  # fmt: skip
        sizes[f"utterance format, --whisper-pcm {pcm}"] = summary["shard_bytes"]
    files = len({p for r in rows for p in (r.ref_audio, r.audio)})
    print(f"{len(encoded)} examples, {files} distinct files, {hours * 60:.1f} min of target audio, tiny Higgs codec "
          f"(8 x 1024, 25 Hz)")  # fmt: skip
    base = sizes["first format, int16 PCM"]
    for name, size in sizes.items():
        print(f"{name:40s} {size / 1e6:8.2f} MB  {size / 1e6 / hours:8.2f} MB per hour of target audio  "
              f"({base / size:.1f}x smaller than int16)")  # fmt: skip
    print(json.dumps({k: round(v / 1e6 / hours, 2) for k, v in sizes.items()}))


if __name__ == "__main__":
    main()
