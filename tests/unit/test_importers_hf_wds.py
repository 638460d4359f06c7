"""Hugging Face and WebDataset importers on small real corpora written with `datasets` and `webdataset`: extracted
audio, same-speaker pairing, rejects naming file + position + reason, resume, and the command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from datasets import Audio, Dataset, DatasetDict, disable_progress_bars

from data_pipeline.importers import import_hf, import_webdataset
from data_pipeline.importers.extract import CorpusWriter, EncodedAudio
from data_pipeline.ingest.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
LIMITS = {"min_ref_seconds": 0.3, "max_ref_seconds": 2.0}
# (id, speaker, seconds, soundfile format, subtype): 3 + 3 + 2 utterances, the formats corpora ship.
CORPUS = [
    ("a1", "spkA", 0.5, "WAV", "PCM_16"),
    ("a2", "spkA", 0.8, "FLAC", "PCM_16"),
    ("a3", "spkA", 1.2, "OGG", "VORBIS"),
    ("b1", "spkB", 0.6, "MP3", "MPEG_LAYER_III"),
    ("b2", "spkB", 1.0, "WAV", "PCM_16"),
    ("b3", "spkB", 1.5, "FLAC", "PCM_16"),
    ("c1", "spkC", 0.4, "OGG", "OPUS"),
    ("c2", "spkC", 0.9, "WAV", "PCM_16"),
]
EXT = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
disable_progress_bars()  # `datasets` would draw one per save


def _written_ext(fmt: str, subtype: str) -> str:
    """The extension the importers give a format (Ogg Opus is told apart from Ogg Vorbis)."""
    return "opus" if subtype == "OPUS" else EXT[fmt]


def _samples(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """A sine plus a little noise, different per seed."""
    t = np.arange(int(seconds * sr)) / sr
    noise = 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * (180 + 25 * seed) * t) + noise).astype(np.float32)


def _encoded(seconds: float, fmt: str, subtype: str, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, _samples(seconds, seed), 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_manifest(out: Path, speakers: dict[str, str], audio: dict[str, bytes] | None = None) -> list[dict]:
    """Every row: readable audio (byte-identical to the source when given), a same-speaker reference other than
    itself; the manifest reader accepts every row. -> the rows."""
    rows = _read_jsonl(out)
    parsed, rejects = read_manifest(out)
    assert rejects == [] and len(parsed) == len(rows)
    for row, manifest_row in zip(rows, parsed, strict=True):
        assert row["ref_id"] != row["id"]
        assert speakers[row["id"]] == speakers[row["ref_id"]] == row["speaker"]
        assert sf.info(str(manifest_row.audio)).frames > 0
        if audio is not None:
            assert manifest_row.audio.read_bytes() == audio[row["id"]]
            assert manifest_row.ref_audio.read_bytes() == audio[row["ref_id"]]
    return rows


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_pipeline.importers", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- Hugging Face


def _hf_dataset(records: list[dict]) -> Dataset:
    return Dataset.from_dict({k: [r[k] for r in records] for k in records[0]}).cast_column("audio", Audio())


def _good_hf_records() -> list[dict]:
    return [
        {"audio": {"bytes": _encoded(sec, fmt, sub, i), "path": f"{uid}.{EXT[fmt]}"}, "text": f"Words of {uid}.",
         "speaker": spk, "utt": uid}
        for i, (uid, spk, sec, fmt, sub) in enumerate(CORPUS)
    ]  # fmt: skip


def test_hf_saved_dataset_dict_extracts_and_pairs(tmp_path: Path) -> None:
    records = _good_hf_records()
    train = _hf_dataset(records)
    DatasetDict({"train": train, "test": train.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "out" / "manifest.jsonl"

    result = import_hf(tmp_path / "dd", out, id_column="utt", show_progress=False, **LIMITS)
    assert result.summary().startswith("converted 8, rejected 0 of 8 records")
    assert (result.written, result.kept) == (8, 0)
    audio = {r["utt"]: r["audio"]["bytes"] for r in records}
    rows = _check_manifest(out, {uid: spk for uid, spk, *_ in CORPUS}, audio)
    assert [r["id"] for r in rows] == [uid for uid, *_ in CORPUS]
    assert [r["text"] for r in rows] == [r["text"] for r in records]
    # Default audio folder next to the manifest, written relative to it; the extension follows the audio format.
    assert [r["audio"] for r in rows] == [f"manifest_audio/{uid}.{_written_ext(f, s)}" for uid, _, _, f, s in CORPUS]

    # A rerun finds the files already written (resume) and pairs the same way.
    again = import_hf(tmp_path / "dd", out, id_column="utt", show_progress=False, **LIMITS)
    assert (again.written, again.kept) == (0, 8) and again.rows == result.rows
    # The other split, default ids (<table>_<row>), one speaker when there is no speaker column.
    test = import_hf(tmp_path / "dd", tmp_path / "t.jsonl", split="test", speaker_column="", show_progress=False,
                     **LIMITS)  # fmt: skip
    assert [r["id"] for r in test.rows] == ["data-00000-of-00001_0", "data-00000-of-00001_1"]
    assert {r["speaker"] for r in test.rows} == {"dd"}
    with pytest.raises(ValueError, match="without split 'dev'"):
        import_hf(tmp_path / "dd", out, split="dev", show_progress=False)


def test_hf_parquet_rejects_bad_rows_and_writes_raw_arrays(tmp_path: Path) -> None:
    records = _good_hf_records()
    # Audio kept as a path (no bytes): read from disk; one such file is gone by import time.
    on_disk, gone = tmp_path / "external" / "a2.flac", tmp_path / "external" / "gone.wav"
    on_disk.parent.mkdir()
    on_disk.write_bytes(records[1]["audio"]["bytes"])
    gone.write_bytes(records[5]["audio"]["bytes"])
    records[1]["audio"] = {"bytes": None, "path": str(on_disk)}
    good = records[:3]
    bad = [
        {**records[3], "text": ""},  # row 3
        {**records[4], "audio": {"bytes": b"this is not audio", "path": "x.wav"}},  # row 4
        {**records[5], "audio": {"bytes": None, "path": str(gone)}},  # row 5
        {**records[6], "speaker": None},  # row 6
        {**records[7], "utt": "a1"},  # row 7: duplicate id
        {**records[7], "text": "   "},  # row 8
    ]
    rename = {"text": "transcript", "speaker": "spk"}
    table = [{rename.get(k, k): v for k, v in r.items()} for r in good + bad]
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    _hf_dataset(table).to_parquet(str(folder / "train-00000-of-00002.parquet"))
    # Decoded audio ({array, sampling_rate}) in the second shard; a test split that --split train must skip.
    raw = [{"audio": {"array": _samples(sec, i).tolist(), "sampling_rate": 16000}, "transcript": f"Raw {uid}.",
            "spk": spk, "utt": f"raw_{uid}"} for i, (uid, spk, sec, *_) in enumerate(CORPUS[3:])]  # fmt: skip
    Dataset.from_dict({k: [r[k] for r in raw] for k in raw[0]}).to_parquet(str(folder / "train-00001-of-00002.parquet"))
    _hf_dataset(good).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    gone.unlink()
    out, rejects_file = tmp_path / "m.jsonl", tmp_path / "rejects.jsonl"

    # Absolute path cells are read only when asked for (tests/integration/test_hostile_inputs.py: relative ones stay
    # inside the table's folder).
    result = import_hf(tmp_path / "hub", out, rejects_file, audio_dir=tmp_path / "wavs", text_column="transcript",
                       speaker_column="spk", id_column="utt", show_progress=False, allow_absolute_paths=True,
                       **LIMITS)  # fmt: skip
    assert result.records == len(table) + len(raw) == len(result.rows) + len(result.rejects) == 14
    shard = str(folder / "train-00000-of-00002.parquet")
    by_row = {r.line: r for r in result.rejects}
    assert {r.source for r in result.rejects} == {shard} and len(by_row) == 6
    assert by_row[3].reason == "text is empty" and by_row[3].id == "b1"
    assert "unsupported or undecodable audio x.wav" in by_row[4].reason
    assert by_row[5].reason == f"audio has no bytes and its path {str(gone)!r} is not a file"
    assert by_row[6].reason == "speaker is missing (null)"
    assert by_row[7].reason == f"duplicate id (first at {shard} row 0)"
    assert by_row[8].reason == "text is empty"
    assert _read_jsonl(rejects_file)[0] == {"source": shard, "row": 3, "id": "b1", "reason": "text is empty"}

    speakers = {r["utt"]: r["spk"] for r in table[:3] + raw}
    rows = _check_manifest(out, speakers)
    assert [r["id"] for r in rows] == ["a1", "a2", "a3", "raw_b1", "raw_b2", "raw_b3", "raw_c1", "raw_c2"]
    # The raw arrays became 16-bit wavs holding the same samples; an absolute --audio-dir stays absolute.
    wav = Path(rows[3]["audio"])
    assert wav == tmp_path / "wavs" / "raw_b1.wav" and sf.info(str(wav)).subtype == "PCM_16"
    assert np.allclose(sf.read(str(wav))[0], _samples(CORPUS[3][2], 0), atol=1e-4)


# ---------------------------------------------------------------------------------------------------- WebDataset


def _write_shard(path: Path, samples: list[dict]) -> None:
    with path.open("wb") as f, wds.TarWriter(f) as sink:
        for sample in samples:
            sink.write(sample)


def _good_samples() -> list[dict]:
    return [
        {"__key__": f"EN_{uid}", EXT[fmt]: _encoded(sec, fmt, sub, i),
         "json": {"id": f"EN_{uid}", "text": f"Words of {uid}.", "speaker": spk, "language": "en"}}
        for i, (uid, spk, sec, fmt, sub) in enumerate(CORPUS)
    ]  # fmt: skip


def test_webdataset_shards_extract_and_pair(tmp_path: Path) -> None:
    samples = _good_samples()
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(shards / "EN-B000000.tar", samples[:5])
    _write_shard(shards / "EN-B000001.tar", samples[5:])
    out = tmp_path / "manifest.jsonl"

    result = import_webdataset(shards, out, show_progress=False, **LIMITS)
    assert result.summary().startswith("converted 8, rejected 0 of 8 records")
    audio = {s["__key__"]: next(v for k, v in s.items() if k in EXT.values()) for s in samples}
    rows = _check_manifest(out, {f"EN_{uid}": spk for uid, spk, *_ in CORPUS}, audio)
    assert [r["id"] for r in rows] == [s["__key__"] for s in samples]
    assert rows[3]["audio"] == "manifest_audio/EN_b1.mp3" and rows[6]["audio"] == "manifest_audio/EN_c1.opus"
    # A brace pattern names the same shards; the pairing depends on the seed only.
    pattern = str(shards / "EN-B00000{0..1}.tar")
    assert import_webdataset(pattern, out, show_progress=False, **LIMITS).rows == result.rows


def test_webdataset_rejects_bad_samples(tmp_path: Path) -> None:
    good = _good_samples()
    wav = _encoded(0.5, "WAV", "PCM_16", 9)
    first = [
        good[0],
        {"__key__": "no_json", "wav": wav},  # sample 1
        {"__key__": "bad_json", "wav": wav, "json": b'{"text": "unterminated'},  # sample 2
        {"__key__": "json_list", "wav": wav, "json": [1, 2]},  # sample 3
        {"__key__": "no_text", "wav": wav, "json": {"speaker": "spkA"}},  # sample 4
        {"__key__": "empty_text", "wav": wav, "json": {"text": "", "speaker": "spkA"}},  # sample 5
        {"__key__": "corrupt", "flac": b"fLaC but not really", "json": {"text": "x", "speaker": "spkA"}},  # 6
        {"__key__": "no_audio", "json": {"text": "x", "speaker": "spkA"}},  # sample 7
        *good[1:4],  # samples 8-10
    ]
    second = [*good[4:], good[0]]  # the last one repeats a key of the first shard
    _write_shard(tmp_path / "s0.tar", first)
    _write_shard(tmp_path / "s1.tar", second)
    out, rejects_file = tmp_path / "m.jsonl", tmp_path / "rejects.jsonl"

    result = import_webdataset([tmp_path / "s0.tar", tmp_path / "s1.tar"], out, rejects_file, show_progress=False,
                               **LIMITS)  # fmt: skip
    assert result.records == len(first) + len(second) == len(result.rows) + len(result.rejects) == 16
    reasons = {(Path(r.source).name, r.line, r.id): r.reason for r in result.rejects}
    assert reasons == {
        ("s0.tar", 1, "no_json"): "no .json member among no_json.wav",
        ("s0.tar", 2, "bad_json"): reasons[("s0.tar", 2, "bad_json")],
        ("s0.tar", 3, "json_list"): "json_list.json is a JSON list, not an object",
        ("s0.tar", 4, "no_text"): "no_text.json has no 'text' field (fields: speaker)",
        ("s0.tar", 5, "empty_text"): "empty_text.json 'text' is empty",
        ("s0.tar", 6, "corrupt"): reasons[("s0.tar", 6, "corrupt")],
        ("s0.tar", 7, "no_audio"): reasons[("s0.tar", 7, "no_audio")],
        ("s1.tar", 4, "EN_a1"): f"duplicate id (first at {tmp_path / 's0.tar'} sample 0)",
    }
    assert reasons[("s0.tar", 2, "bad_json")].startswith("bad_json.json: invalid JSON")
    assert reasons[("s0.tar", 6, "corrupt")].startswith("unsupported or undecodable audio corrupt.flac")
    assert reasons[("s0.tar", 7, "no_audio")].startswith("no audio member")
    written = _read_jsonl(rejects_file)
    assert [(Path(r["source"]).name, r["sample"]) for r in written] == [(n, i) for n, i, _ in reasons]
    _check_manifest(out, {f"EN_{uid}": spk for uid, spk, *_ in CORPUS})


def test_audio_file_names_stay_inside_and_apart(tmp_path: Path) -> None:
    """Ids from tar keys or id columns may hold path separators, dots or differ only in case."""
    writer = CorpusWriter(tmp_path / "m.jsonl", None, "sample")
    ids = ["../../escape", "a/b", "a_b", "A", "a", ".hidden"]
    for i, record_id in enumerate(ids):
        writer.add("src.tar", i, record_id, EncodedAudio(_encoded(0.4, "WAV", "PCM_16", i)), "words", "spk")
    files = [Path(u.audio) for u in writer.utterances]
    assert len(files) == len(ids) and len({f.name.casefold() for f in files}) == len(ids)
    assert all(f.parent == Path("m_audio") and not f.name.startswith(".") for f in files)
    assert sorted(p.name for p in (tmp_path / "m_audio").iterdir()) == sorted(f.name for f in files)


# ---------------------------------------------------------------------------------------------------- command line


def test_commands_run_as_modules(tmp_path: Path) -> None:
    _hf_dataset(_good_hf_records()).save_to_disk(str(tmp_path / "ds"))
    _write_shard(tmp_path / "shard.tar", [*_good_samples(), {"__key__": "lonely", "wav": b"RIFF"}])
    limits = ["--min-ref-seconds", "0.3", "--max-ref-seconds", "2"]
    hf = _run("hf", str(tmp_path / "ds"), "--out", str(tmp_path / "hf.jsonl"), "--id-column", "utt", *limits)
    assert hf.returncode == 0, hf.stderr
    assert "converted 8, rejected 0 of 8 records" in hf.stdout
    wds_run = _run("webdataset", str(tmp_path / "shard.tar"), "--out", str(tmp_path / "wds.jsonl"),
                   "--audio-dir", str(tmp_path / "wds_audio"), *limits)  # fmt: skip
    assert wds_run.returncode == 0, wds_run.stderr
    assert "converted 8, rejected 1 of 9 records" in wds_run.stdout
    # Without --rejects the reasons go to stderr, naming the shard and sample.
    assert f"rejected {tmp_path / 'shard.tar'} sample 8 (id lonely): no .json member" in wds_run.stderr
    for manifest in ("hf.jsonl", "wds.jsonl"):
        assert read_manifest(tmp_path / manifest)[1] == []

    for command in ("hf", "webdataset"):
        missing = _run(command, str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.jsonl"))
        assert missing.returncode == 4
        assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: not found"]
    # A shard cut short (an interrupted download) and a file that is no tar at all cost what cannot be read, not the
    # import: the samples before the cut are kept and each unreadable rest is one reject naming the file.
    _write_shard(tmp_path / "other.tar", [{**x, "__key__": "other_" + x["__key__"]} for x in _good_samples()])
    whole = (tmp_path / "other.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2])
    not_tar = tmp_path / "notes.tar"
    not_tar.write_text("plain text, not a tar archive")
    cut = _run("webdataset", str(tmp_path / "shard.tar"), str(tmp_path / "cut.tar"), str(not_tar), "--out",
               str(tmp_path / "x.jsonl"), "--rejects", str(tmp_path / "x.rejects.jsonl"), *limits)  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    rejects = [json.loads(line) for line in (tmp_path / "x.rejects.jsonl").read_text().splitlines()]
    unreadable = {r["source"]: r for r in rejects if "not a readable tar file" in r["reason"]}
    assert set(unreadable) == {str(tmp_path / "cut.tar"), str(not_tar)}
    assert unreadable[str(not_tar)]["sample"] == 0 and unreadable[str(tmp_path / "cut.tar")]["sample"] >= 1
    kept = [json.loads(line)["id"] for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert len(kept) > 8  # the whole first shard and the readable start of the cut one
