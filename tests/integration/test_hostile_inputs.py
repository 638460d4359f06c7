"""A corpus of hostile manifest lines (bad encodings, binary, huge lines, wrong JSON types, BOM, CRLF) run through the
real `python -m data_pipeline.prepare`, the in-memory dataset the trainer and the evaluation use, and the importers:
every non-blank line ends in a shard or in the rejects, with a reason naming what is wrong; nothing crashes."""

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

from data_pipeline.importers import InputError, import_chatml, import_pairs, split_by_speaker
from data_pipeline.ingest.manifest import MAX_LINE_BYTES, read_manifest
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.dataset import EncodedVoiceCloningDataset
from data_pipeline.prepare.build_set import INDEX_FILE, REJECTS_FILE
from data_pipeline.types import AudioGeometry
from tests.helpers import REPO


def _good_rows(assets) -> list[dict]:
    base = assets.manifest.parent
    rows = [json.loads(line) for line in assets.manifest.read_text().splitlines()[:4]]
    for row in rows:
        row["ref_audio"], row["audio"] = str(base / row["ref_audio"]), str(base / row["audio"])
    return rows


def hostile_lines(good: dict) -> list[tuple[bytes, str | None]]:
    """(line bytes without newline, expected reject reason fragment; None: the line is a good row)."""

    def row(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    latin1 = json.dumps({**good, "id": "latin1", "text": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    return [
        (latin1, "byte 0xe9 at column"),
        (bytes(b for b in range(256) if b != 0x0A) * 4, "is not UTF-8"),  # binary garbage (one line)
        (b"\x00\x01\x02\x03 binary \xff\xfe", "is not UTF-8"),
        (b"\x00" * 64, "invalid JSON"),  # decodes as UTF-8, is not JSON
        (b"\xef\xbb\xbf" + row(id="bom_not_on_line_1"), "invalid JSON"),  # a BOM is only accepted on line 1
        (b'{"id": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}', f"line longer than {MAX_LINE_BYTES} bytes"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),  # nested too deeply for the parser
        (b'{"id": ' + b"9" * 5000 + b"}", "invalid JSON"),  # more digits than Python converts
        (row(id="text_int", text=12345), "'text' must be a string, got int"),
        (row(id=7), "'id' must be a string, got int"),
        (row(id="ref_list", ref_text=["a"]), "'ref_text' must be a string, got list"),
        (row(id="speaker_int", speaker=3), "'speaker' must be a string, got int"),
        (row(id="scene_obj", scene={"a": 1}), "'scene' must be a string, got dict"),
        (row(id="audio_null", audio=None), "missing or empty fields: audio"),
        (row(id="surrogate", text="\ud800"), "unpaired surrogate"),
        (b'"just a string"', "line is a JSON str, not an object"),
        (b"[1, 2]", "line is a JSON list, not an object"),
        (b'{"id": "trunc', "invalid JSON"),
        (row(id="crlf_ok", text="a CRLF line") + b"\r", None),
        (json.dumps({**good, "id": "utf8_ok", "text": "na\u00efve \u4e2d\u6587"}, ensure_ascii=False).encode(), None),
        (row(id="nul_path", audio=good["audio"] + "\x00.wav"), "file not found"),
    ]


@pytest.fixture(scope="module")
def hostile_manifest(assets, tmp_path_factory) -> tuple[Path, dict[int, str | None]]:
    """Line 1 starts with a BOM, lines end in CRLF, blank lines in between; -> (path, line -> expected reason)."""
    good = _good_rows(assets)
    lines = [(b"\xef\xbb\xbf" + json.dumps(good[0]).encode(), None)]
    lines += [(json.dumps(r).encode(), None) for r in good[1:]]
    lines += [(b"", None), (b"   \t", None)]  # blank: skipped, not counted
    lines += hostile_lines({**good[0], "id": "hostile"})
    expected = {i: reason for i, (raw, reason) in enumerate(lines, start=1) if raw.strip()}
    path = tmp_path_factory.mktemp("hostile") / "manifest.jsonl"
    path.write_bytes(b"".join(raw + b"\r\n" for raw, _ in lines))
    return path, expected


def _check_accounting(expected: dict[int, str | None], kept_lines: list[int], rejects: list[dict]) -> None:
    by_line = {r["line"]: r for r in rejects}
    assert len(by_line) == len(rejects), "one reject per line"
    assert sorted(kept_lines + list(by_line)) == sorted(expected), "every non-blank line is a row or a reject"
    for line, reason in expected.items():
        if reason is None:
            assert line in kept_lines, (line, by_line.get(line))
        else:
            assert reason in by_line[line]["reason"], (line, reason, by_line[line])


def test_read_manifest_parses_around_hostile_lines(hostile_manifest) -> None:
    path, expected = hostile_manifest
    rows, rejects = read_manifest(path)
    # Audio files are checked at encode time, so the NUL path is still a parsed row here.
    parseable = {line for line, reason in expected.items() if reason in (None, "file not found")}
    assert {r.line for r in rows} == parseable
    assert {r.line for r in rejects} == set(expected) - parseable
    assert rows[0].id == json.loads(path.read_bytes()[3:].split(b"\r\n")[0])["id"]  # the BOM line is a row


def test_prepare_cli_puts_every_hostile_line_in_a_shard_or_the_rejects(hostile_manifest, assets, tmp_path) -> None:
    path, expected = hostile_manifest
    out = tmp_path / "prep"
    cmd = [
        sys.executable,
        "-m",
        "data_pipeline.prepare",
        "--manifest",
        str(path),
        "--codec",
        "dac",
        "--codec-path",
        str(assets.codec_file),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--rows-per-shard",
        "4",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(var, None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = pq.read_table(out / INDEX_FILE).to_pydict()
    rejects = [json.loads(line) for line in (out / REJECTS_FILE).read_text().splitlines()]
    _check_accounting(expected, index["line"], rejects)
    assert {"crlf_ok", "utf8_ok"} <= set(index["id"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["manifest_rows"] == len(expected)


def test_train_and_eval_manifests_reject_hostile_lines(hostile_manifest, codec) -> None:
    """The in-memory dataset behind `train data.manifest=...` and `data.eval_manifest` reads the same way."""
    path, expected = hostile_manifest
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(codec.num_codebooks, codec.codebook_size))
    dataset = EncodedVoiceCloningDataset(path, codec, layout, show_progress=False)
    rows, _ = read_manifest(path)
    kept = {r.id: r.line for r in rows}
    _check_accounting(expected, [kept[ex.sample_id] for ex in dataset.examples],
                      [{"line": r.line, "reason": r.reason} for r in dataset.rejects])  # fmt: skip


def test_split_keeps_every_hostile_line(hostile_manifest, tmp_path) -> None:
    path, expected = hostile_manifest
    lines = path.read_bytes().split(b"\r\n")
    good = json.loads(lines[1])
    extra = [json.dumps({**good, "id": f"s{i}", "speaker": f"spk{i % 3}"}).encode() for i in range(6)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\r\n".join(lines[:-1] + extra) + b"\r\n")
    split = split_by_speaker(manifest, tmp_path, tmp_path, eval_speakers=1)
    rejected = {r.line: r.reason for r in split.train.rejects}
    assert len(split.train.rows) + len(split.eval.rows) + len(rejected) == len(expected) + len(extra)
    for line, reason in expected.items():  # split checks the row fields too; audio files are not opened
        assert (line in rejected) == (reason not in (None, "file not found")), (line, reason)
    assert "byte 0xe9 at column" in rejected[min(k for k, v in expected.items() if v and "0xe9" in v)]


def test_pairs_corpus_rejects_undecodable_and_huge_lines(tmp_path) -> None:
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for name in ("a1", "a2", "b1"):
        sf.write(wavs / f"{name}.wav", np.zeros(16000 * 4, np.float32) + 0.1, 16000)
    meta = tmp_path / "metadata.csv"
    meta.write_bytes(
        b"\xef\xbb\xbfwavs/a1.wav|first|spkA\r\n"  # BOM + CRLF
        b"wavs/a2.wav|caf\xe9|spkA\r\n"  # Latin-1
        b"wavs/b1.wav|" + b"x" * (MAX_LINE_BYTES + 5) + b"|spkB\n"
        b"\x00\xff\xfe\n"
        b"wavs/a2.wav|second|spkA\n"
    )
    result = import_pairs(meta, tmp_path / "out.jsonl", tmp_path / "rejects.jsonl", min_ref_seconds=1)
    reasons = {r.line: r.reason for r in result.rejects}
    assert [r["id"] for r in result.rows] == ["wavs/a1", "wavs/a2"]
    assert "byte 0xe9 at column" in reasons[2] and "longer than" in reasons[3] and "not UTF-8" in reasons[4]
    assert len(result.rows) + len(result.rejects) == 5


def test_chatml_that_is_not_utf8_is_one_clear_error(tmp_path) -> None:
    src = tmp_path / "chat.json"
    src.write_bytes(b'[\n  {"messages": [],\n   "speaker": "caf\xe9"}\n]\n')
    with pytest.raises(InputError, match=r"chat.json: byte 0xe9 at byte offset 39 \(line 3, column 19\) is not UTF-8"):
        import_chatml(src, tmp_path / "out.jsonl")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf[]")
    assert import_chatml(bom, tmp_path / "out.jsonl").rows == []
    cmd = [sys.executable, "-m", "data_pipeline.importers", "chatml", str(src), "--out", str(tmp_path / "o.jsonl")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {src}: byte 0xe9 at byte offset 39 (line 3, column 19) "
        "is not UTF-8 (invalid continuation byte); re-save the file as UTF-8"
    ]
