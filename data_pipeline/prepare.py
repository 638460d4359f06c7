"""Offline preparation: manifest -> validated, codec-encoded Parquet shards + index + rejects.

    python -m data_pipeline.prepare --manifest M.jsonl --codec dac|higgs --codec-path P --out DIR [options]

- Data-parallel: under `deepspeed --module data_pipeline.prepare ...` or `torchrun -m data_pipeline.prepare ...` each
  rank encodes a disjoint set of shards (shard k belongs to rank k mod world size); rank 0 merges the index at the end.
- Resumable and deterministic: rows go to shards in manifest order (`--rows-per-shard`), whatever the world size; a
  shard that exists is complete (written atomically) and is skipped on a re-run, so a crashed or interrupted run is
  simply started again and produces the same dataset.
- Nothing is lost: every manifest line is either an example in a shard or a line in `rejects.jsonl` (source line, id,
  reason); the summary counts both and checks they add up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm import tqdm

from data_pipeline.codecs import Codec, load_codec
from data_pipeline.encode_rows import encode_rows
from data_pipeline.errors import DATA_ERRORS, UsageError, run_cli
from data_pipeline.manifest import Reject, read_manifest
from data_pipeline.shards import DATASET_FILE, INDEX_FILE, REJECTS_FILE, shard_index, shard_name, write_shard
from data_pipeline.validation import Limits

log = logging.getLogger("data_pipeline.prepare")


@dataclass
class PrepareConfig:
    manifest: str
    codec: str
    codec_path: str
    out: str
    rows_per_shard: int = 512
    encode_batch: int | None = None  # files per codec call; None: 16 on a GPU, 1 on a CPU
    device: str = "cpu"
    limits: Limits | None = None
    # Store each row's 16 kHz reference PCM (FLAC) for the Whisper tower: "yes", or "no" for runs with Whisper off
    # (the published Higgs Audio v2 mode), where the codes are all training reads (~97% of the bytes saved).
    whisper_pcm: str = "yes"

    def __post_init__(self) -> None:
        if self.whisper_pcm not in ("yes", "no"):
            raise UsageError(f"--whisper-pcm must be yes or no, got {self.whisper_pcm!r}")

    @property
    def pcm_format(self) -> str:
        return "flac" if self.whisper_pcm == "yes" else "none"


def _rejects_path(out: Path, shard: int) -> Path:
    return out / f"shard-{shard:05d}.rejects.jsonl"


def _dataset_meta(cfg: PrepareConfig, codec: Codec, total_rows: int) -> dict:
    return {
        "manifest": str(Path(cfg.manifest).resolve()), "codec": cfg.codec, "codec_path": str(cfg.codec_path),
        "sample_rate": codec.sample_rate, "num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size,
        "frame_rate": codec.frame_rate, "rows_per_shard": cfg.rows_per_shard, "manifest_rows": total_rows,
        "limits": asdict(cfg.limits or Limits()), "reference_pcm": cfg.pcm_format,
    }  # fmt: skip


def prepare(cfg: PrepareConfig, rank: int = 0, world_size: int = 1, show_progress: bool = True) -> dict | None:
    """Encode this rank's shards; rank 0 then merges. Returns the summary on rank 0 (None elsewhere)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = cfg.limits or Limits()
    rows, parse_rejects = read_manifest(cfg.manifest)
    total = len(rows) + len(parse_rejects)
    codec = load_codec(cfg.codec, cfg.codec_path, cfg.device)
    meta = _dataset_meta(cfg, codec, total)
    meta_path = out / DATASET_FILE
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        changed = {k for k in meta if old.get(k) != meta[k]}
        if changed:
            raise UsageError(f"{out} was prepared with different settings ({sorted(changed)}); use a new --out")
    elif rank == 0:
        meta_path.write_text(json.dumps(meta, indent=2))
    shards = [rows[i : i + cfg.rows_per_shard] for i in range(0, len(rows), cfg.rows_per_shard)]
    mine = [k for k in range(len(shards)) if k % world_size == rank]
    todo = [k for k in mine if not (out / shard_name(k)).is_file()]
    if len(todo) < len(mine):
        log.info("rank %d: %d of %d shards already done, skipping them", rank, len(mine) - len(todo), len(mine))
    bar = tqdm(total=sum(len(shards[k]) for k in todo), unit="row", desc=f"prepare rank {rank}",
               disable=not show_progress, dynamic_ncols=True)  # fmt: skip
    hours = 0.0
    for k in todo:
        encoded, rejects = encode_rows(shards[k], codec, limits, cfg.manifest, cfg.encode_batch)
        tmp = _rejects_path(out, k).with_suffix(".tmp")
        tmp.write_text("".join(r.to_json() + "\n" for r in rejects))
        os.replace(tmp, _rejects_path(out, k))
        write_shard(out / shard_name(k), encoded, cfg.pcm_format)  # last: its existence marks the shard done
        hours += sum(r.ref_seconds + r.target_seconds for r in encoded) / 3600
        bar.update(len(shards[k]))
        bar.set_postfix(audio_h=f"{hours:.2f}", rejected=len(rejects))
    bar.close()
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        return None
    return merge(out, len(shards), parse_rejects, total)


def merge(out: Path, num_shards: int, parse_rejects: list[Reject], total_rows: int) -> dict:
    """Join the shard indexes and rejects; check that every manifest row is accounted for."""
    tables, rejects = [], [r.to_json() for r in parse_rejects]
    for k in range(num_shards):
        path = out / shard_name(k)
        if not path.is_file():
            raise RuntimeError(f"shard {path} is missing: a rank did not finish; re-run the same command to resume")
        table = shard_index(path)
        table = table.append_column("shard", pa.array([k] * table.num_rows, pa.int32()))
        tables.append(table.append_column("row", pa.array(range(table.num_rows), pa.int32())))
        rejects += [line for line in _rejects_path(out, k).read_text().splitlines() if line]
    index = pa.concat_tables(tables) if tables else pa.table({"id": pa.array([], pa.string())})
    tmp = out / f".{INDEX_FILE}.tmp"
    pq.write_table(index, tmp)
    os.replace(tmp, out / INDEX_FILE)
    (out / REJECTS_FILE).write_text("".join(line + "\n" for line in rejects))
    examples = index.num_rows
    hours = (sum(index.column("ref_seconds").to_pylist()) + sum(index.column("target_seconds").to_pylist())) / 3600 \
        if examples else 0.0  # fmt: skip
    target_hours = sum(index.column("target_seconds").to_pylist()) / 3600 if examples else 0.0
    stored = sum((out / shard_name(k)).stat().st_size for k in range(num_shards))
    summary = {"manifest_rows": total_rows, "examples": examples, "rejected": len(rejects), "shards": num_shards,
               "audio_hours": round(hours, 4), "target_hours": round(target_hours, 4), "shard_bytes": stored,
               "mb_per_target_hour": round(stored / 1e6 / target_hours, 2) if target_hours else None}  # fmt: skip
    if examples + len(rejects) != total_rows:
        raise RuntimeError(f"row accounting failed: {examples} examples + {len(rejects)} rejects != {total_rows} rows")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run prepare; an expected error is one `error:` line and its exit code (see data_pipeline.errors)."""
    return run_cli(_main, argv, DATA_ERRORS)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--codec", required=True, choices=["dac", "higgs"])
    parser.add_argument("--codec-path", required=True, help="local codec weights (file for dac, folder for higgs)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows-per-shard", type=int, default=512)
    parser.add_argument(
        "--encode-batch",
        type=int,
        default=None,
        help="audio files per codec call, shortest first (default: 16 on a GPU, 1 on a CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--whisper-pcm", choices=["yes", "no"], default="yes",
        help="store the 16 kHz reference audio (FLAC) that the Whisper tower needs; 'no' for runs with "
        "whisper.enabled=false saves ~97%% of the space",
    )  # fmt: skip
    for field in ("min_seconds", "max_seconds", "min_ref_seconds", "max_ref_seconds"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=getattr(Limits(), field))
    parser.add_argument("--max-text-chars", type=int, default=Limits().max_text_chars)
    parser.add_argument("--traceback", action="store_true", help="on an expected error, show the full traceback")
    argv = [a for a in argv if not a.startswith("--local_rank")]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        dist.init_process_group("gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    limits = Limits(min_seconds=args.min_seconds, max_seconds=args.max_seconds, min_ref_seconds=args.min_ref_seconds,
                    max_ref_seconds=args.max_ref_seconds, max_text_chars=args.max_text_chars)  # fmt: skip
    cfg = PrepareConfig(args.manifest, args.codec, args.codec_path, args.out, args.rows_per_shard, args.encode_batch,
                        args.device, limits, args.whisper_pcm)  # fmt: skip
    started = time.perf_counter()
    summary = prepare(cfg, rank, world_size)
    if summary is not None:
        elapsed = time.perf_counter() - started
        print(f"prepared {summary['examples']} examples ({summary['audio_hours']:.3f} h of audio) in "
              f"{summary['shards']} shards, {summary['shard_bytes'] / 1e6:.1f} MB ({summary['mb_per_target_hour']} MB "
              f"per hour of target audio); {summary['rejected']} rows rejected (see {Path(args.out) / REJECTS_FILE}); "
              f"{elapsed:.1f} s")  # fmt: skip
    if world_size > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
