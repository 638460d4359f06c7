"""Offline preparation: manifest -> validated, codec-encoded utterance shards + example index + rejects.

    python -m data_pipeline.prepare --manifest M.jsonl --codec dac|higgs --codec-path P --out DIR [options]

- Each distinct audio file is decoded, checked and encoded once, however many rows use it (as reference or target),
  and stored once (`data_pipeline.prepare.utterance_store`); examples are pairs of utterance ids. The 16 kHz PCM the
  Whisper tower needs is kept only for files that are some row's reference, and only with `--whisper-pcm yes` (or
  `auto` for a run config with Whisper on).
- Data-parallel: under `deepspeed --module data_pipeline.prepare ...` or `torchrun -m data_pipeline.prepare ...` each
  rank encodes a disjoint set of shards (shard k belongs to rank k mod world size); rank 0 merges at the end.
- Resumable and deterministic: files go to shards in order of first use in the manifest (`--rows-per-shard` files
  each), whatever the world size; a shard that exists is complete (written atomically) and is skipped on a re-run, so
  a crashed or interrupted run is simply started again and produces the same dataset.
- Nothing is lost: every manifest line is either an example or a line in `rejects.jsonl` (source line, id, reason);
  the summary counts both and checks they add up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import yaml

from data_pipeline.codecs import Codec, load_codec
from data_pipeline.errors import DATA_ERRORS, InputError, UsageError, run_cli
from data_pipeline.ingest.manifest import ManifestRow, Reject, read_manifest
from data_pipeline.ingest.validation import Limits, RowError, check_duration, check_text
from data_pipeline.layout.builder import LayoutOptions
from data_pipeline.prepare.encode_rows import AudioFile, encode_utterances
from data_pipeline.prepare.shards import DATASET_FILE, INDEX_FILE, REJECTS_FILE
from data_pipeline.prepare.utterance_store import (
    FORMAT_VERSION,
    LIGHT_COLUMNS,
    UTTERANCES_FILE,
    utterance_shard_name,
    write_table_atomically,
    write_utterance_shard,
)
from data_pipeline.progress import Progress
from data_pipeline.types import AudioGeometry, geometry_mismatch

log = logging.getLogger("data_pipeline.prepare")

WHISPER_PCM_CHOICES = ("auto", "yes", "no")


def whisper_pcm_for_run(run_config: str | Path | None) -> str:
    """`--whisper-pcm auto` -> "yes" or "no": whether the run config (YAML) turns the Whisper tower on. Without a run
    config the PCM is kept, so every run stays possible."""
    if run_config is None:
        log.info("--whisper-pcm auto: no --run-config given, so the reference PCM is kept (a Whisper-off run needs "
                 "none: pass --run-config RUN.yaml or --whisper-pcm no to store only codes)")  # fmt: skip
        return "yes"
    path = Path(run_config)
    doc = _run_config_doc(path)
    section = doc.get("whisper") if isinstance(doc, dict) else None
    enabled = section.get("enabled", LayoutOptions().whisper) if isinstance(section, dict) else LayoutOptions().whisper
    if not isinstance(enabled, bool):
        raise InputError(f"{path}: whisper.enabled must be true or false, got {enabled!r}")
    log.info("--whisper-pcm auto: %s has whisper.enabled=%s, so the reference PCM is %s", path,
             str(enabled).lower(), "kept" if enabled else "not stored")  # fmt: skip
    return "yes" if enabled else "no"


def _run_config_doc(path: Path) -> Any:
    """The `--run-config` YAML as parsed (prepare reads only the keys it needs; the trainer validates the rest)."""
    if not path.is_file():
        raise FileNotFoundError(f"run config {path} does not exist (--run-config)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid YAML ({err}) (--run-config)") from None


def check_run_geometry(run_config: str | Path | None, geometry: AudioGeometry) -> None:
    """The model of `--run-config` (its `model.path` config.json) must take this codec's codes: checked before any
    audio is encoded, so a mismatch costs seconds, not the whole encoding. A preset (no model.path) fits any codec."""
    if run_config is None:
        return
    path = Path(run_config)
    doc = _run_config_doc(path)
    model = doc.get("model") if isinstance(doc, dict) else None
    model_path = model.get("path") if isinstance(model, dict) else None
    if not isinstance(model_path, str) or not model_path:
        return
    config_file = path.parent / model_path / "config.json"  # relative to the YAML's folder, as the trainer reads it
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.warning("--run-config %s: %s not found here, so the model's codebooks are not checked", path, config_file)
        return
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{config_file} (model.path of --run-config {path}): unreadable ({err})") from None
    problem = geometry_mismatch(model_config if isinstance(model_config, dict) else {}, geometry)
    if problem:
        raise UsageError(f"--run-config {path}: model.path {model_path}: {problem}; prepare with the codec the model "
                         "was trained with (--codec, --codec-path)")  # fmt: skip


@dataclass
class PrepareConfig:
    manifest: str
    codec: str
    codec_path: str
    out: str
    rows_per_shard: int = 512  # distinct audio files per shard
    encode_batch: int | None = None  # files per codec call; None: 16 on a GPU, 1 on a CPU
    device: str = "cpu"
    limits: Limits | None = None
    # Store the 16 kHz PCM (FLAC) of every reference file for the Whisper tower: "yes", "no" for runs with Whisper off
    # (the published Higgs Audio v2 mode: codes are all training reads), or "auto": what `run_config` needs.
    whisper_pcm: str = "yes"
    run_config: str | None = None

    def __post_init__(self) -> None:
        if self.whisper_pcm not in WHISPER_PCM_CHOICES:
            raise UsageError(f"--whisper-pcm must be one of {'|'.join(WHISPER_PCM_CHOICES)}, got {self.whisper_pcm!r}")
        if self.rows_per_shard < 1:
            raise UsageError(f"--rows-per-shard must be >= 1, got {self.rows_per_shard}")
        if self.whisper_pcm == "auto":
            self.whisper_pcm = whisper_pcm_for_run(self.run_config)

    @property
    def pcm_format(self) -> str:
        return "flac" if self.whisper_pcm == "yes" else "none"


def distinct_files(rows: list[ManifestRow], keep_pcm: bool) -> list[AudioFile]:
    """The manifest's distinct audio files in order of first use, with the roles each plays; uid = position."""
    roles: dict[Path, set[str]] = {}
    for row in rows:
        roles.setdefault(row.ref_audio, set()).add("reference")
        roles.setdefault(row.audio, set()).add("target")
    return [
        AudioFile(uid, path, frozenset(r), keep_pcm and "reference" in r) for uid, (path, r) in enumerate(roles.items())
    ]


def _dataset_meta(cfg: PrepareConfig, codec: Codec, total_rows: int) -> dict:
    return {
        "format": FORMAT_VERSION, "manifest": str(Path(cfg.manifest).resolve()), "codec": cfg.codec,
        "codec_path": str(cfg.codec_path), "sample_rate": codec.sample_rate, "num_codebooks": codec.num_codebooks,
        "codebook_size": codec.codebook_size, "frame_rate": codec.frame_rate, "rows_per_shard": cfg.rows_per_shard,
        "manifest_rows": total_rows, "limits": asdict(cfg.limits or Limits()), "reference_pcm": cfg.pcm_format,
    }  # fmt: skip


def prepare(cfg: PrepareConfig, rank: int = 0, world_size: int = 1, show_progress: bool = True) -> dict | None:
    """Encode this rank's shards; rank 0 then merges. Returns the summary on rank 0 (None elsewhere)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = cfg.limits or Limits()
    rows, parse_rejects = read_manifest(cfg.manifest)
    total = len(rows) + len(parse_rejects)
    codec = load_codec(cfg.codec, cfg.codec_path, cfg.device)
    check_run_geometry(cfg.run_config, AudioGeometry(codec.num_codebooks, codec.codebook_size))
    meta = _dataset_meta(cfg, codec, total)
    meta_path = out / DATASET_FILE
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        changed = {k for k in meta if old.get(k) != meta[k]}
        if changed:
            raise UsageError(f"{out} was prepared with different settings ({sorted(changed)}); use a new --out")
    elif rank == 0:
        meta_path.write_text(json.dumps(meta, indent=2))
    files = distinct_files(rows, cfg.pcm_format != "none")
    shards = [files[i : i + cfg.rows_per_shard] for i in range(0, len(files), cfg.rows_per_shard)]
    mine = [k for k in range(len(shards)) if k % world_size == rank]
    todo = [k for k in mine if not (out / utterance_shard_name(k)).is_file()]
    if len(todo) < len(mine):
        log.info("rank %d: %d of %d shards already done, skipping them", rank, len(mine) - len(todo), len(mine))
    bar = Progress(sum(len(shards[k]) for k in todo), f"prepare rank {rank}", "file", show_progress)
    hours, unusable = 0.0, 0
    for k in todo:
        encoded = encode_utterances(shards[k], codec, limits, cfg.encode_batch, on_batch=bar.update)
        write_utterance_shard(out / utterance_shard_name(k), encoded, cfg.pcm_format)
        hours += sum(u.seconds for u in encoded) / 3600
        unusable += sum(u.error is not None for u in encoded)
        bar.set_postfix(audio_h=f"{hours:.2f}", h_per_s=f"{hours / max(1e-9, bar.elapsed):.4f}",
                        unusable=unusable, refresh=False)  # fmt: skip
    bar.close()
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        return None
    return merge(out, cfg.manifest, rows, files, len(shards), parse_rejects, total, limits)


def _read_utterances(out: Path, num_shards: int) -> dict[int, dict]:
    """uid -> the light columns of its stored row, plus where it is (shard, row)."""
    found: dict[int, dict] = {}
    for k in range(num_shards):
        path = out / utterance_shard_name(k)
        if not path.is_file():
            raise RuntimeError(f"shard {path} is missing: a rank did not finish; re-run the same command to resume")
        for row, item in enumerate(pq.read_table(path, columns=LIGHT_COLUMNS).to_pylist()):
            has_pcm = item.pop("pcm_format") != "none"
            found[item["uid"]] = {**item, "shard": k, "row": row, "has_pcm": has_pcm}
    return found


def _example(row: ManifestRow, ref: dict, target: dict, limits: Limits) -> dict:
    """The index entry of a manifest row, or RowError naming what is wrong with it."""
    ref_text, text = check_text(row.ref_text, "ref_text", limits), check_text(row.text, "text", limits)
    for path, stored, role in ((row.ref_audio, ref, "reference"), (row.audio, target, "target")):
        if stored["error"] is not None:
            raise RowError(stored["error"])
        check_duration(path, stored["seconds"], limits, role)
    return {
        "id": row.id, "line": row.line, "speaker": row.speaker, "language": row.language, "scene": row.scene,
        "ref_text": ref_text,
        "text": text, "ref_uid": ref["uid"], "target_uid": target["uid"], "ref_frames": ref["frames"],
        "target_frames": target["frames"], "ref_samples16k": ref["samples16k"], "ref_seconds": ref["seconds"],
        "target_seconds": target["seconds"],
    }  # fmt: skip


INDEX_SCHEMA = pa.schema([
    ("id", pa.string()), ("line", pa.int64()), ("speaker", pa.string()), ("language", pa.string()),
    ("scene", pa.string()), ("ref_text", pa.string()), ("text", pa.string()), ("ref_uid", pa.int64()),
    ("target_uid", pa.int64()),
    ("ref_frames", pa.int32()), ("target_frames", pa.int32()), ("ref_samples16k", pa.int64()),
    ("ref_seconds", pa.float32()), ("target_seconds", pa.float32()),
])  # fmt: skip
UTTERANCE_INDEX_SCHEMA = pa.schema([
    ("uid", pa.int64()), ("path", pa.string()), ("text", pa.string()), ("speaker", pa.string()),
    ("language", pa.string()), ("shard", pa.int32()), ("row", pa.int32()), ("frames", pa.int32()),
    ("seconds", pa.float32()), ("samples16k", pa.int64()), ("has_pcm", pa.bool_()),
])  # fmt: skip


def write_set_indexes(out: Path, examples: list[dict], utterances: list[dict], rejects: list[str]) -> None:
    """index.parquet (examples), utterances.parquet (usable utterances) and rejects.jsonl of a format-2 set."""
    write_table_atomically(pa.Table.from_pylist(utterances, UTTERANCE_INDEX_SCHEMA), out / UTTERANCES_FILE, 65536)
    write_table_atomically(pa.Table.from_pylist(examples, INDEX_SCHEMA), out / INDEX_FILE, 65536)
    (out / REJECTS_FILE).write_text("".join(line + "\n" for line in rejects))


def storage_summary(out: Path, examples: list[dict], num_shards: int) -> dict:
    """Hours of audio and bytes on disk of a prepared set (per hour of target audio: what a corpus costs to keep)."""
    stored = sum((out / utterance_shard_name(k)).stat().st_size for k in range(num_shards))
    stored += sum((out / name).stat().st_size for name in (INDEX_FILE, UTTERANCES_FILE))
    target_hours = sum(e["target_seconds"] for e in examples) / 3600
    hours = target_hours + sum(e["ref_seconds"] for e in examples) / 3600
    return {"audio_hours": round(hours, 4), "target_hours": round(target_hours, 4), "shard_bytes": stored,
            "mb_per_target_hour": round(stored / 1e6 / target_hours, 2) if target_hours else None}  # fmt: skip


def merge(
    out: Path,
    source: str,
    rows: list[ManifestRow],
    files: list[AudioFile],
    num_shards: int,
    parse_rejects: list[Reject],
    total_rows: int,
    limits: Limits,
) -> dict:
    """Pair the stored utterances into examples, write the indexes and rejects; check every row is accounted for."""
    stored = _read_utterances(out, num_shards)
    uid_of = {f.path: f.uid for f in files}
    rejects, examples = [r.to_json() for r in parse_rejects], []
    texts: dict[int, str] = {}  # an utterance's transcript: its text where it is a target, else its ref_text
    speakers: dict[int, str | None] = {}
    languages: dict[int, str | None] = {}
    as_target: set[int] = set()
    for row in rows:
        ref, target = stored[uid_of[row.ref_audio]], stored[uid_of[row.audio]]
        try:
            examples.append(_example(row, ref, target, limits))
        except RowError as err:
            rejects.append(Reject(source, row.line, row.id, str(err)).to_json())
            continue
        if target["uid"] not in as_target:  # a target's own text wins over a row's ref_text for the same file
            as_target.add(target["uid"])
            texts[target["uid"]] = examples[-1]["text"]
        texts.setdefault(ref["uid"], examples[-1]["ref_text"])
        for uid in (ref["uid"], target["uid"]):
            speakers.setdefault(uid, row.speaker)
            languages.setdefault(uid, row.language)
    utterances = [
        {"uid": f.uid, "path": str(f.path), "text": texts[f.uid], "speaker": speakers[f.uid],
         "language": languages[f.uid],
         **{k: stored[f.uid][k] for k in ("shard", "row", "frames", "seconds", "samples16k", "has_pcm")}}
        for f in files if f.uid in texts
    ]  # fmt: skip
    rejects.sort(key=lambda line: json.loads(line)["line"])
    write_set_indexes(out, examples, utterances, rejects)
    summary = {"manifest_rows": total_rows, "examples": len(examples), "rejected": len(rejects), "shards": num_shards,
               "utterances": len(utterances), **storage_summary(out, examples, num_shards)}  # fmt: skip
    if len(examples) + len(rejects) != total_rows:
        raise RuntimeError(f"row accounting failed: {len(examples)} examples + {len(rejects)} rejects != {total_rows}")
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
    parser.add_argument("--rows-per-shard", type=int, default=512, help="distinct audio files per shard")
    parser.add_argument(
        "--encode-batch",
        type=int,
        default=None,
        help="audio files per codec call, shortest first (default: 16 on a GPU, 1 on a CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--whisper-pcm", choices=WHISPER_PCM_CHOICES, default="auto",
        help="store the 16 kHz audio (FLAC) of the reference files for the Whisper tower: yes, no (runs with "
        "whisper.enabled=false need only codes), or auto (default): what --run-config needs, yes without one",
    )  # fmt: skip
    parser.add_argument("--run-config", default=None, help="the run config (YAML) the set is for: --whisper-pcm auto "
                        "reads whisper.enabled from it")  # fmt: skip
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
                        args.device, limits, args.whisper_pcm, args.run_config)  # fmt: skip
    started = time.perf_counter()
    summary = prepare(cfg, rank, world_size)
    if summary is not None:
        elapsed = time.perf_counter() - started
        print(f"prepared {summary['examples']} examples ({summary['audio_hours']:.3f} h of audio, "
              f"{summary['utterances']} distinct files) in {summary['shards']} shards, "
              f"{summary['shard_bytes'] / 1e6:.1f} MB ({summary['mb_per_target_hour']} MB per hour of target audio); "
              f"{summary['rejected']} rows rejected (see {Path(args.out) / REJECTS_FILE}); "
              f"{elapsed:.1f} s")  # fmt: skip
    if world_size > 1:
        dist.destroy_process_group()
    return 0

