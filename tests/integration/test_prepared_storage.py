"""How a prepared set stores its audio (issue 14): each distinct file once, its codes always, its 16 kHz PCM (lossless
FLAC) only where it is a reference and the run will use Whisper (`--whisper-pcm auto|yes|no`); sets of the first
format (one row per example, raw int16 or FLAC PCM) are refused by name and converted by a command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.errors import InputError, UsageError
from data_pipeline.ingest.manifest import read_manifest
from data_pipeline.ingest.validation import Limits
from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.prepare.build_set import PrepareConfig, prepare
from data_pipeline.prepare.convert_prepared import convert
from data_pipeline.prepare.encode_rows import encode_rows
from data_pipeline.prepare.shards import DATASET_FILE, INDEX_FILE, SHARD_SCHEMA, shard_index, shard_name, write_shard
from data_pipeline.prepare.utterance_store import UTTERANCES_FILE, utterance_shard_name
from data_pipeline.types import AudioGeometry
from ds_train.trainer import Trainer
from tests.helpers import command_env, make_config


def _layout(root: Path, whisper: bool) -> LayoutBuilder:
    meta = json.loads((root / "dataset.json").read_text())
    geometry = AudioGeometry(meta["num_codebooks"], meta["codebook_size"])
    return LayoutBuilder(build_tiny_tokenizer(), geometry, LayoutOptions(whisper=whisper))


def test_each_file_is_stored_once_and_only_references_keep_pcm(prepared_corpus: Path, codec) -> None:
    meta = json.loads((prepared_corpus / DATASET_FILE).read_text())
    rows, _ = read_manifest(meta["manifest"])
    references = {r.ref_audio for r in rows}
    files = list(dict.fromkeys(p for r in rows for p in (r.ref_audio, r.audio)))
    utterances = pq.read_table(prepared_corpus / UTTERANCES_FILE).to_pydict()
    assert utterances["path"] == [str(p) for p in files] and len(files) < 2 * len(rows)
    assert utterances["has_pcm"] == [p in references for p in files]
    stored = pa.concat_tables([pq.read_table(prepared_corpus / utterance_shard_name(k))
                               for k in range(max(utterances["shard"]) + 1)])  # fmt: skip
    assert stored.column("uid").to_pylist() == utterances["uid"]
    assert [len(b) > 0 for b in stored.column("pcm16k").to_pylist()] == utterances["has_pcm"]
    # FLAC is lossless: the PCM read back equals the int16-quantised 16 kHz reference, every sample.
    encoded, _ = encode_rows(rows[:3], codec, Limits(), meta["manifest"])
    dataset = PreparedDataset(prepared_corpus, _layout(prepared_corpus, whisper=True))
    for i, fresh in enumerate(encoded):
        kept = dataset.row(i)
        quantised = (fresh.ref_pcm16k.clamp(-1, 1) * 32767).round() / 32767
        assert kept.ref_pcm16k.shape == fresh.ref_pcm16k.shape
        assert torch.equal(kept.ref_pcm16k, quantised.float())
        assert torch.equal(kept.ref_codes, fresh.ref_codes) and torch.equal(kept.target_codes, fresh.target_codes)


def test_no_pcm_shrinks_the_set_and_whisper_runs_are_refused_by_name(
    assets, prepared_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no_pcm"
    # the same manifest with a language per row: it is kept per example and per utterance
    lines = [json.loads(line) for line in assets.manifest.read_text().splitlines()]
    manifest = assets.manifest.parent / "with_languages.jsonl"
    manifest.write_text("".join(json.dumps({**r, "language": ["en", "de"][k % 2]}) + "\n" for k, r in enumerate(lines)))
    cfg = PrepareConfig(str(manifest), "dac", str(assets.codec_file), str(out), 12, whisper_pcm="no")
    summary = prepare(cfg, show_progress=False)
    index = pq.read_table(out / INDEX_FILE).to_pydict()
    assert index["language"] == [["en", "de"][k % 2] for k in range(len(lines))]
    utterances = pq.read_table(out / UTTERANCES_FILE).to_pydict()
    first_use = {}
    for k, r in enumerate(lines):
        for path in (r["ref_audio"], r["audio"]):
            first_use.setdefault(str(manifest.parent / path), ["en", "de"][k % 2])
    assert utterances["language"] == [first_use[p] for p in utterances["path"]]
    with_pcm = json.loads((prepared_corpus / "summary.json").read_text())
    assert summary["examples"] == with_pcm["examples"] == 24
    assert summary["shard_bytes"] < with_pcm["shard_bytes"] / 3
    assert summary["mb_per_target_hour"] < with_pcm["mb_per_target_hour"] / 3
    with pytest.raises(InputError, match="--whisper-pcm no.*whisper.enabled=true"):
        PreparedDataset(out, _layout(out, whisper=True))
    dataset = PreparedDataset(out, _layout(out, whisper=False))
    assert dataset.lengths == PreparedDataset(prepared_corpus, _layout(prepared_corpus, whisper=False)).lengths
    example = dataset[0]
    assert not example.whisper_chunks and example.audio_frames.numel() > 0
    trainer = Trainer(make_config(assets, tmp_path / "run", f"data.prepared={out}", "whisper.enabled=false",
                                  "train.max_steps=1", "train.tensorboard=false"))  # fmt: skip
    assert trainer.fit().final_step == 1


def test_whisper_pcm_auto_follows_the_run_config(assets, tmp_path: Path) -> None:
    def auto(config: Path | None) -> str:
        cfg = PrepareConfig("m.jsonl", "dac", "c", str(tmp_path / "o"), whisper_pcm="auto",
                            run_config=None if config is None else str(config))  # fmt: skip
        return cfg.pcm_format

    off, on, plain, bad = (tmp_path / f"{n}.yaml" for n in ("off", "on", "plain", "bad"))
    off.write_text("whisper:\n  enabled: false\n")
    on.write_text("whisper:\n  enabled: true\n")
    plain.write_text("train:\n  lr: 1.0e-4\n")  # Whisper left at its default: on
    bad.write_text("whisper:\n  enabled: maybe\n")
    assert (auto(off), auto(on), auto(plain), auto(None)) == ("none", "flac", "flac", "flac")
    with pytest.raises(InputError, match="whisper.enabled must be true or false"):
        auto(bad)
    with pytest.raises(FileNotFoundError, match="--run-config"):
        auto(tmp_path / "missing.yaml")
    # Through the command line: a Whisper-off run config stores no PCM.
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "data_pipeline.prepare", "--manifest", str(assets.manifest), "--codec", "dac",
         "--codec-path", str(assets.codec_file), "--out", str(out), "--run-config", str(off)],
        env=command_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / DATASET_FILE).read_text())["reference_pcm"] == "none"
    assert "whisper.enabled=false" in proc.stderr and "prepared 24 examples" in proc.stdout


def _first_format_set(manifest: Path, codec, out: Path, raw_int16: bool) -> None:
    """A set as `prepare` wrote it before the utterance format: one row per example holding its reference."""
    rows, _ = read_manifest(manifest)
    encoded, _ = encode_rows(rows, codec, Limits(), str(manifest))
    out.mkdir()
    tables = []
    for k in range(0, len(encoded), 10):
        path = out / shard_name(k // 10)
        write_shard(path, encoded[k : k + 10], "flac")
        if raw_int16:  # older still: raw int16 PCM and no ref_pcm_format column
            table = pq.read_table(path)
            raw = [(r.ref_pcm16k.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
                   for r in encoded[k : k + 10]]  # fmt: skip
            columns = {n: table.column(n) for n in SHARD_SCHEMA.names if n != "ref_pcm_format"}
            pq.write_table(pa.table({**columns, "ref_pcm16k": pa.array(raw, pa.binary())}), path)
        index = shard_index(path)
        index = index.append_column("shard", pa.array([k // 10] * index.num_rows, pa.int32()))
        tables.append(index.append_column("row", pa.array(range(index.num_rows), pa.int32())))
    pq.write_table(pa.concat_tables(tables), out / INDEX_FILE)
    meta = {"num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size, "reference_pcm": "flac"}
    (out / DATASET_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("raw_int16", [False, True])
def test_first_format_sets_are_refused_by_name_and_converted(
    assets, codec, prepared_corpus: Path, tmp_path: Path, raw_int16: bool
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _first_format_set(assets.manifest, codec, old, raw_int16)
    layout = _layout(prepared_corpus, whisper=True)
    with pytest.raises(InputError, match=rf"first format.*python -m data_pipeline.prepare.convert_prepared {old} NEW"):
        PreparedDataset(old, layout)
    if raw_int16:  # through the command line
        proc = subprocess.run([sys.executable, "-m", "data_pipeline.prepare.convert_prepared", str(old), str(new)],
                              env=command_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "converted 24 examples" in proc.stdout
    else:
        summary = convert(old, new, utterances_per_shard=7, show_progress=False)
        fresh = json.loads((prepared_corpus / "summary.json").read_text())
        assert summary["utterances"] == fresh["utterances"]  # recognised by their codes: each file once
        assert summary["shard_bytes"] < sum(p.stat().st_size for p in old.glob("shard-*.parquet"))
        with pytest.raises(UsageError, match="already in the utterance format"):
            convert(new, tmp_path / "again", show_progress=False)
    converted, prepared = PreparedDataset(new, layout), PreparedDataset(prepared_corpus, layout)
    assert converted.lengths == prepared.lengths
    for i in range(len(prepared)):
        a, b = converted[i], prepared[i]
        assert a.sample_id == b.sample_id and torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.audio_frames, b.audio_frames)
        assert torch.equal(a.whisper_chunks[0], b.whisper_chunks[0])
