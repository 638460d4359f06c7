"""Offline preparation (utterance shards, indexes, rejects, resume, data-parallel), the prepared dataset, token-budget
batching, and training from prepared shards with bad rows skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

import data_pipeline.prepare.encode_rows as encode_rows_module
from data_pipeline.errors import InputError
from data_pipeline.ingest.manifest import read_manifest
from data_pipeline.ingest.validation import Limits
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.collator import VoiceCloningCollator
from data_pipeline.loading.dataset import EncodedVoiceCloningDataset
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_choice import ReferencePolicy
from data_pipeline.loading.samplers import TokenBudgetBatchSampler
from data_pipeline.prepare.build_set import INDEX_FILE, REJECTS_FILE, PrepareConfig, prepare
from data_pipeline.prepare.encode_rows import encode_rows
from data_pipeline.prepare.utterance_store import UTTERANCES_FILE, UtteranceShard, codes_from_bytes
from data_pipeline.prepare.utterance_store import utterance_shard_name as shard_name
from data_pipeline.types import AudioGeometry, BadSample
from ds_train.components.data import build_run_data, resolve_codec
from ds_train.config import ConfigError
from ds_train.trainer import Trainer
from tests.helpers import command_env, free_port, make_config

SR = 22050


def _bad_inputs(tmp_path: Path, good: dict) -> list[str]:
    """One manifest line per bad-input case, each with its own audio file written here."""
    rng = np.random.default_rng(0)
    speech = lambda s: (0.1 * rng.standard_normal(int(SR * s))).astype(np.float32)  # noqa: E731
    sf.write(str(tmp_path / "silent.wav"), np.zeros(SR * 2, np.float32), SR)
    sf.write(str(tmp_path / "nan.wav"), np.where(np.arange(SR * 2) == 7, np.nan, speech(2)).astype(np.float32), SR,
             subtype="FLOAT")  # fmt: skip
    sf.write(str(tmp_path / "six.wav"), np.stack([speech(2)] * 6, axis=1), SR)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), SR)
    sf.write(str(tmp_path / "short.wav"), speech(0.1), SR)
    sf.write(str(tmp_path / "long.wav"), speech(40), SR)
    sf.write(str(tmp_path / "rate.wav"), speech(2)[:4], 1)  # a 1 Hz file
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    row = lambda **kw: json.dumps({**good, **kw})  # noqa: E731
    return [
        row(id="missing", audio="nope.wav"), row(id="corrupt", audio="corrupt.wav"),
        row(id="zero_len", audio="empty.wav"), row(id="silent", audio="silent.wav"), row(id="nan", audio="nan.wav"),
        row(id="channels", audio="six.wav"), "{this is not json", json.dumps({"id": "fields", "text": "x"}),
        row(id="blank_text", text="   "), row(id="long_text", text="word " * 400), row(id="too_long", audio="long.wav"),
        row(id="too_short", audio="short.wav"), row(id="bad_rate", audio="rate.wav"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def manifest_with_bad_rows(assets, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep_manifest")
    base = assets.manifest.parent
    good = [json.loads(line) for line in assets.manifest.read_text().splitlines()]
    for row in good:
        row["ref_audio"], row["audio"] = str(base / row["ref_audio"]), str(base / row["audio"])
    lines = [json.dumps(r) for r in good] + _bad_inputs(root, good[0])
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepare(manifest: Path, assets, out: Path, rows_per_shard: int = 10) -> dict:
    return prepare(PrepareConfig(str(manifest), "dac", str(assets.codec_file), str(out), rows_per_shard),
                   show_progress=False)  # fmt: skip


def test_every_row_is_in_a_shard_or_rejected_with_its_reason(manifest_with_bad_rows, assets, tmp_path: Path) -> None:
    summary = _prepare(manifest_with_bad_rows, assets, tmp_path / "prep")
    assert summary["manifest_rows"] == 24 + 13 and summary["examples"] == 24 and summary["rejected"] == 13
    rejects = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "prep" / REJECTS_FILE).open()}
    expect = {
        "missing": "file not found", "corrupt": "cannot read audio header", "zero_len": "zero-length",
        "silent": "all-silent", "nan": "NaN", "channels": "channel layout", "blank_text": "empty",
        "long_text": "over the limit", "too_long": "longer than", "too_short": "shorter than",
        "bad_rate": "sample rate",
        "fields": "missing or empty fields",
    }  # fmt: skip
    for sample_id, reason in expect.items():
        assert reason in rejects[sample_id]["reason"], (sample_id, rejects[sample_id])
    assert any("invalid JSON" in r["reason"] for r in rejects.values() if r["id"] is None)
    assert all(r["line"] > 24 for r in rejects.values())
    index = pq.read_table(tmp_path / "prep" / INDEX_FILE).to_pydict()
    assert len(index["id"]) == 24
    # Each distinct file of the parseable rows is stored once, usable or not (then with its reason), 10 per shard.
    rows, _ = read_manifest(manifest_with_bad_rows)
    files = list(dict.fromkeys(p for r in rows for p in (r.ref_audio, r.audio)))
    stored = [pq.read_table(tmp_path / "prep" / shard_name(k)) for k in range(summary["shards"])]
    assert summary["shards"] == -(-len(files) // 10) and sum(t.num_rows for t in stored) == len(files)
    uids = [u for t in stored for u in t.column("uid").to_pylist()]
    assert uids == list(range(len(files)))
    errors = [e for t in stored for e in t.column("error").to_pylist() if e is not None]
    assert len(errors) == 9 and any("file not found" in e for e in errors)  # 9 of the bad rows' own files
    usable = pq.read_table(tmp_path / "prep" / UTTERANCES_FILE).to_pydict()
    assert summary["utterances"] == len(usable["uid"]) == len({*index["ref_uid"], *index["target_uid"]})
    paths = dict(zip(usable["uid"], usable["path"], strict=True))
    for k in range(24):  # examples point at the files their rows name
        assert (paths[index["ref_uid"][k]], paths[index["target_uid"][k]]) == (str(rows[k].ref_audio),
                                                                               str(rows[k].audio))  # fmt: skip


def test_rerun_resumes_and_reproduces_the_dataset(manifest_with_bad_rows, assets, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    _prepare(manifest_with_bad_rows, assets, out)
    shards = len(list(out.glob("utt-*.parquet")))
    before = {k: pq.read_table(out / shard_name(k)) for k in range(shards)}
    mtimes = {k: os.stat(out / shard_name(k)).st_mtime_ns for k in range(shards)}
    index = pq.read_table(out / INDEX_FILE)
    (out / shard_name(2)).unlink()  # as if the run died while writing shard 2
    _prepare(manifest_with_bad_rows, assets, out)
    assert all(os.stat(out / shard_name(k)).st_mtime_ns == mtimes[k] for k in range(shards) if k != 2)  # skipped
    assert pq.read_table(out / INDEX_FILE).equals(index)
    for k in range(shards):
        assert pq.read_table(out / shard_name(k)).equals(before[k])
    with pytest.raises(ValueError, match="different settings"):
        _prepare(manifest_with_bad_rows, assets, out, rows_per_shard=7)


def test_two_ranks_with_torchrun_make_the_same_dataset(manifest_with_bad_rows, assets, tmp_path: Path) -> None:
    _prepare(manifest_with_bad_rows, assets, tmp_path / "one")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "data_pipeline.prepare",
           "--manifest", str(manifest_with_bad_rows), "--codec", "dac", "--codec-path", str(assets.codec_file),
           "--out", str(tmp_path / "two"), "--rows-per-shard", "10"]  # fmt: skip
    proc = subprocess.run(cmd, env=command_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prepared 24 examples" in proc.stdout and "13 rows rejected" in proc.stdout
    for name in (INDEX_FILE, UTTERANCES_FILE):
        assert pq.read_table(tmp_path / "one" / name).equals(pq.read_table(tmp_path / "two" / name))
    for k in range(len(list((tmp_path / "one").glob("utt-*.parquet")))):
        assert pq.read_table(tmp_path / "one" / shard_name(k)).equals(pq.read_table(tmp_path / "two" / shard_name(k)))


def test_prepared_dataset_lengths_and_examples(manifest_with_bad_rows, assets, codec, tmp_path: Path) -> None:
    _prepare(manifest_with_bad_rows, assets, tmp_path / "prep")
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(codec.num_codebooks, codec.codebook_size))
    ds = PreparedDataset(tmp_path / "prep", layout)
    assert len(ds) == 24 and len(ds.rejects) == 13
    for i in range(len(ds)):
        ex = ds[i]
        assert ex.num_tokens == ds.lengths[i] and ex.sample_id == ds.index["id"][i]
        assert ex.whisper_chunks[0].abs().max() > 0
    target = int(np.flatnonzero(ds.utterances["uid"] == ds.index["target_uid"][3])[0])
    ds.utterances["row"][target] = 10**6  # a row the shard lacks
    assert isinstance(ds[3], BadSample) and "IndexError" in ds[3].reason


def test_dataloader_workers_started_by_spawn_load_the_same_batches(prepared_corpus: Path, codec) -> None:
    """Workers started by spawn (the default on macOS) receive the dataset pickled: its columns, layout and collator
    must survive that and give the batches the main process makes."""
    geometry = AudioGeometry(codec.num_codebooks, codec.codebook_size)
    layout = LayoutBuilder(build_tiny_tokenizer(), geometry)
    dataset = PreparedDataset(prepared_corpus, layout, ReferencePolicy("same_speaker", 1.0, 30.0, seed=0))
    collator = VoiceCloningCollator(layout.ids.pad, geometry)
    keys = [[(i, 1) for i in range(k, k + 4)] for k in (0, 4)]  # (index, epoch): references drawn for epoch 1
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=keys, collate_fn=collator, num_workers=1,
                                         multiprocessing_context="spawn")  # fmt: skip
    for spawned, key in zip(loader, keys, strict=True):
        here = collator([dataset[k] for k in key])
        for name in ("input_ids", "audio_input_ids", "whisper_input_features"):
            assert torch.equal(spawned[name], here[name]), name


def test_shard_rows_are_read_one_row_group_at_a_time(manifest_with_bad_rows, assets, tmp_path: Path) -> None:
    _prepare(manifest_with_bad_rows, assets, tmp_path / "prep")
    path = tmp_path / "prep" / shard_name(0)
    whole = pq.read_table(path)
    reader = UtteranceShard(path)
    assert reader.file.num_row_groups > 1  # small groups: a random read decodes a few rows, not the shard
    for i in range(whole.num_rows):
        row = whole.slice(i, 1).to_pylist()[0]
        if row["error"] is not None:
            with pytest.raises(ValueError, match="unusable"):
                reader.read(i)
            continue
        assert torch.equal(reader.read(i).codes, codes_from_bytes(row["codes"], row["num_codebooks"], row["frames"]))
    with pytest.raises(IndexError, match="out of range"):
        reader.read(whole.num_rows)
    # A shard written as one row group reads the same examples.
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(4, 256))
    before = [PreparedDataset(tmp_path / "prep", layout)[i] for i in range(24)]
    pq.write_table(whole, path)
    assert pq.ParquetFile(path).num_row_groups == 1
    one_group = PreparedDataset(tmp_path / "prep", layout)
    for i, ex in enumerate(before):
        assert torch.equal(one_group[i].input_ids, ex.input_ids)
        assert torch.equal(one_group[i].audio_frames, ex.audio_frames)


def test_in_memory_dataset_matches_prepared_dataset(manifest_with_bad_rows, assets, codec, tmp_path: Path) -> None:
    """The bare-manifest path runs the same checks and encoding as `prepare`: same rejects, same examples."""
    # Different shards and codec batch sizes on purpose: batched DAC codes equal one-at-a-time codes.
    prepare(PrepareConfig(str(manifest_with_bad_rows), "dac", str(assets.codec_file), str(tmp_path / "prep"), 10,
                          encode_batch=16), show_progress=False)  # fmt: skip
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(codec.num_codebooks, codec.codebook_size))
    prepared = PreparedDataset(tmp_path / "prep", layout)
    in_memory = EncodedVoiceCloningDataset(manifest_with_bad_rows, codec, layout, encode_batch_size=3,
                                           show_progress=False)  # fmt: skip
    assert [(r.line, r.id, r.reason) for r in in_memory.rejects] == sorted(
        (r.line, r.id, r.reason) for r in prepared.rejects
    )
    assert len(in_memory) == len(prepared) == 24
    # Every file is encoded once, also the ones that are one row's reference and another's target.
    rows, _ = read_manifest(manifest_with_bad_rows)
    encoded: list[int] = []
    encode_rows(rows, codec, Limits(), "m", 4, on_batch=encoded.append)
    good = {r.ref_audio for r in rows[:24]} | {r.audio for r in rows[:24]}
    both = {r.ref_audio for r in rows[:24]} & {r.audio for r in rows[:24]}
    assert both and sum(encoded) == len(good)
    for i in range(len(prepared)):
        a, b = in_memory[i], prepared[i]
        assert a.sample_id == b.sample_id
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.audio_frames, b.audio_frames)
        # prepared shards store the 16 kHz reference as int16 PCM
        assert torch.allclose(a.whisper_chunks[0], b.whisper_chunks[0], atol=1 / 16384)


def test_a_file_in_both_roles_is_decoded_once_and_checked_per_role(assets, codec, tmp_path, monkeypatch) -> None:
    """0.8 s is a valid target (min 0.5 s) but too short for a reference (min 1 s): the row using it as a target is
    kept, the one using it as a reference is rejected, and the file is decoded once for both."""
    base = assets.manifest.parent
    good = [json.loads(line) for line in assets.manifest.read_text().splitlines()][0]
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(0.8 * SR)) / SR)
    sf.write(str(tmp_path / "short.wav"), tone.astype(np.float32), SR)
    lines = [
        {**good, "id": "as_target", "ref_audio": str(base / good["ref_audio"]), "audio": "short.wav"},
        {**good, "id": "as_reference", "ref_audio": "short.wav", "audio": str(base / good["audio"])},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows, _ = read_manifest(tmp_path / "m.jsonl")
    decoded: list[Path] = []
    real_load = encode_rows_module.load_checked_audio
    monkeypatch.setattr(encode_rows_module, "load_checked_audio",
                        lambda path, *a, **kw: decoded.append(path) or real_load(path, *a, **kw))  # fmt: skip
    encoded, rejects = encode_rows(rows, codec, Limits(), "m.jsonl")
    assert [r.id for r in encoded] == ["as_target"]
    assert [(r.id, r.line) for r in rejects] == [("as_reference", 2)]
    assert "short.wav: reference audio is 0.80 s, shorter than the minimum 1.00 s" in rejects[0].reason
    # short.wav and the first row's reference; the second row is rejected before its target is loaded.
    assert sorted(p.name for p in decoded) == sorted(["short.wav", Path(good["ref_audio"]).name])


def _realistic_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts of voice-cloning samples: reference 3-15 s, target 1-20 s at 25 frames/s, plus text."""
    rng = np.random.default_rng(seed)
    ref, tgt = rng.uniform(3, 15, n), rng.uniform(1, 20, n)
    return [int(60 + 25 * r + 25 * t + 15 * t + 25 * r) for r, t in zip(ref, tgt, strict=True)]


def test_token_budget_batches_are_packed_disjoint_deterministic_and_resumable() -> None:
    lengths = _realistic_lengths(2000)
    ranks = [TokenBudgetBatchSampler(lengths, 8192, rank=r, world_size=2, seed=3) for r in range(2)]
    per_epoch = ranks[0].batches_per_epoch
    assert per_epoch == ranks[1].batches_per_epoch > 0
    seen = [i for r in ranks for k in range(per_epoch) for i in r.batch_at(k)]
    assert len(seen) == len(set(seen))  # disjoint across ranks and batches within an epoch
    for k in range(per_epoch):
        batch = ranks[0].batch_at(k)
        assert max(lengths[i] for i in batch) * len(batch) <= 8192
    assert ranks[0].padding_efficiency() >= 0.95
    again = TokenBudgetBatchSampler(lengths, 8192, rank=0, world_size=2, seed=3)
    assert [again.batch_at(k) for k in range(5)] == [ranks[0].batch_at(k) for k in range(5)]
    it = iter(ranks[0])
    first = [next(it) for _ in range(per_epoch + 3)]  # crosses into epoch 1
    resumed = TokenBudgetBatchSampler(lengths, 8192, rank=0, world_size=2, seed=3)
    resumed.load_state_dict({"consumed": per_epoch - 2, "seed": 3})
    it2 = iter(resumed)
    assert [next(it2) for _ in range(5)] == first[per_epoch - 2 :]
    with pytest.raises(ValueError, match="longer than data.max_tokens"):
        TokenBudgetBatchSampler([10, 20000], 8192)


def _prepared_trainer(manifest: Path, assets, tmp_path: Path, *overrides: str) -> Trainer:
    _prepare(manifest, assets, tmp_path / "prep")
    cfg = make_config(assets, tmp_path / "run", f"data.prepared={tmp_path / 'prep'}", "data.max_tokens=2400",
                      "data.num_workers=0", *overrides)  # fmt: skip
    cfg.data.manifest = None
    trainer = Trainer(cfg)
    for i in range(10):  # 10 of the 24 rows now fail to load: their target is not in the set
        trainer.data.dataset.index["target_uid"][i] = 10**9
    return trainer


def test_training_from_prepared_shards_skips_and_counts_bad_rows(manifest_with_bad_rows, assets, tmp_path) -> None:
    trainer = _prepared_trainer(
        manifest_with_bad_rows, assets, tmp_path, "train.max_steps=3", "data.max_bad_fraction=0.9"
    )
    assert isinstance(trainer.batches.sampler, TokenBudgetBatchSampler)
    stats = [trainer.train_step().values for _ in range(3)]
    assert all(np.isfinite(v["train/loss"]) for v in stats)
    assert stats[-1]["monitor/bad_rows_skipped"] == 13.0  # rejected at prepare time
    assert stats[-1]["monitor/bad_samples_skipped"] == trainer.batches.bad_samples >= 1  # failed at training time


def test_too_many_bad_rows_stop_the_run(manifest_with_bad_rows, assets, tmp_path: Path) -> None:
    trainer = _prepared_trainer(
        manifest_with_bad_rows, assets, tmp_path, "train.max_steps=100", "data.max_bad_fraction=0.2"
    )
    # a data error (exit code 5 at the command line), decided by every rank together
    with pytest.raises(InputError, match=r"rows failed to load .* > data.max_bad_fraction=0.2"):
        trainer.fit()


def test_prepared_sets_must_match_the_runs_codec(manifest_with_bad_rows, assets, tmp_path, caplog) -> None:
    _prepare(manifest_with_bad_rows, assets, tmp_path / "prep")
    prep = f"data.prepared={tmp_path / 'prep'}"
    with pytest.raises(ConfigError, match=r"data.codec=higgs but data.prepared .* encoded with the 'dac' codec"):
        Trainer(make_config(assets, tmp_path / "a", prep, "data.codec=higgs"))
    with pytest.raises(ConfigError, match=r"data.eval_prepared .* 'dac' codec but this run uses 'higgs'"):
        evaluated_with_higgs = make_config(assets, tmp_path / "b", f"data.eval_prepared={tmp_path / 'prep'}",
                                           "data.codec=higgs")  # fmt: skip
        build_run_data(resolve_codec(evaluated_with_higgs), build_tiny_tokenizer(), 0)
    copy = tmp_path / "copy_of_codec.pth"
    copy.write_bytes(assets.codec_file.read_bytes())
    with caplog.at_level("WARNING", logger="ds_train"):
        other_weights = make_config(assets, tmp_path / "c", prep, f"data.codec_path={copy}")
        parts = build_run_data(resolve_codec(other_weights), build_tiny_tokenizer(), 0)
    assert len(parts.dataset) == 24 and "make sure they are the same weights" in caplog.text
