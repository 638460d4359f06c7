"""A corpus of hostile manifest lines (bad encodings, binary, huge lines, wrong JSON types, BOM, CRLF) run through the
real `python -m data_pipeline.prepare`, the in-memory dataset the trainer and the evaluation use, and the importers:
every non-blank line ends in a shard or in the rejects, with a reason naming what is wrong; nothing crashes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from data_pipeline.importers import (
    InputError,
    import_chatml,
    import_hf,
    import_pairs,
    import_webdataset,
    split_by_speaker,
)
from data_pipeline.ingest.manifest import MAX_LINE_BYTES, read_manifest
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.loading.dataset import EncodedVoiceCloningDataset
from data_pipeline.prepare.build_set import INDEX_FILE, REJECTS_FILE
from data_pipeline.types import AudioGeometry
from ds_train.model.presets import llm_config
from tests.helpers import REPO, command_env, train_args


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
        # a name longer than the file system's 255 bytes: one bad row, not an OSError that stops the job
        (row(id="long_name", audio=str(Path(good["audio"]).parent / ("n" * 300 + ".wav"))), "(File name too long)"),
    ]


# Reasons found when the audio file is opened (at encode time), not when the line is parsed.
AUDIO_FILE_REASONS = ("file not found", "(File name too long)")


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
    # Audio files are checked at encode time, so the NUL path and the too long name are still parsed rows here.
    parseable = {line for line, reason in expected.items() if reason in (None, *AUDIO_FILE_REASONS)}
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
        assert (line in rejected) == (reason not in (None, *AUDIO_FILE_REASONS)), (line, reason)
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


# ------------------------------------------------------------------------------- importers: names, ids, cells, paths


def _wav_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(seed).uniform(-0.3, 0.3, int(16000 * seconds)).astype(np.float32)
    sf.write(buf, noise, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _no_tmp_left(folder: Path) -> None:
    assert not list(folder.rglob("*.tmp")), list(folder.rglob("*.tmp"))


def test_chatml_long_audio_name_and_non_unicode_id_are_rejects_written_losslessly(assets, tmp_path) -> None:
    good = _good_rows(assets)[0]

    def entry(target: str, **top: object) -> dict:
        audio = [{"type": "audio", "audio_url": p} for p in (good["ref_audio"], target)]
        return {"messages": [{"role": "user", "content": "ref words"}, {"role": "assistant", "content": [audio[0]]},
                             {"role": "user", "content": "target words"},
                             {"role": "assistant", "content": [audio[1]]}], **top}  # fmt: skip

    too_long = str(Path(good["audio"]).parent / ("n" * 300 + ".wav"))
    src = tmp_path / "chat.json"
    # json.dumps writes the lone surrogate as the escape "\udce9", which json.loads reads back as a lone surrogate.
    src.write_text(json.dumps([entry(good["audio"], misc={"id": "ok"}), entry(too_long, misc={"id": "long"}),
                               entry(good["audio"], misc={"id": "bad\udce9id"})]))  # fmt: skip
    out, rejects_file = tmp_path / "out" / "m.jsonl", tmp_path / "out" / "rejects.jsonl"
    result = import_chatml(src, out, rejects_file)
    assert [r["id"] for r in result.rows] == ["ok"]
    rejects = [json.loads(line) for line in rejects_file.read_text(encoding="utf-8").splitlines()]
    assert [(r["index"], r["id"]) for r in rejects] == [(1, "long"), (2, "bad\udce9id")]  # the id, exactly
    assert "target audio cannot be accessed" in rejects[0]["reason"] and "File name too long" in rejects[0]["reason"]
    assert "unpaired surrogate" in rejects[1]["reason"]
    _no_tmp_left(tmp_path)


def test_webdataset_member_name_not_utf8_is_a_reject_and_every_shard_keeps_its_rejects(tmp_path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        with tarfile.open(shards / f"s{k}.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
            members = [(f"spk{k}_a.wav", _wav_bytes(1.0, k)), (f"spk{k}_a.json", b'{"text": "a", "speaker": "s"}'),
                       ("caf\u00e9.wav", _wav_bytes(1.0, 9)), ("caf\u00e9.json", b'{"text": "b", "speaker": "s"}'),
                       (f"spk{k}_nojson.wav", _wav_bytes(1.0, 5))]  # fmt: skip
            for name, data in members:  # latin-1 names: the member is named by the bytes caf\xe9
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out, rejects_file = tmp_path / "m.jsonl", tmp_path / "rejects.jsonl"
    result = import_webdataset(shards, out, rejects_file, min_ref_seconds=0.5, max_ref_seconds=2.0,
                               show_progress=False)  # fmt: skip
    rejects = [json.loads(line) for line in rejects_file.read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == len(result.rejects) and result.records == 6
    for shard in ("s0.tar", "s1.tar"):  # each shard's rejects, the undecodable name's id exactly (surrogate escapes)
        assert "caf\udce9" in [r["id"] for r in rejects if Path(r["source"]).name == shard], rejects
    assert "caf\udce9".encode("utf-8", "surrogateescape") == b"caf\xe9"
    _no_tmp_left(tmp_path)


def _save_to_disk_folder(folder: Path, table: pa.Table) -> Path:
    """A `Dataset.save_to_disk` folder (one Arrow IPC stream + state.json), written with pyarrow alone."""
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=4)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return folder / "data-00000-of-00001.arrow"


def _audio_table(texts: pa.Array, n: int) -> pa.Table:
    audio = pa.array([{"bytes": _wav_bytes(1.0 + 0.1 * i, i), "path": f"u{i}.wav"} for i in range(n)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    return pa.table({"audio": audio, "text": texts, "speaker": pa.array(["s"] * n)})


def test_hf_string_cell_not_utf8_is_a_reject(tmp_path) -> None:
    n = 8
    raw = [f"words {i}".encode() for i in range(n)]
    raw[5] = b"caf\xe9 broken"  # invalid UTF-8 in an Arrow string cell (view: the bytes are kept unchecked)
    texts = pa.array(raw, pa.binary()).view(pa.string())
    _save_to_disk_folder(tmp_path / "ds", _audio_table(texts, n))
    result = import_hf(tmp_path / "ds", tmp_path / "m.jsonl", tmp_path / "r.jsonl", speaker_column="speaker",
                       min_ref_seconds=0.5, max_ref_seconds=2.0, show_progress=False)  # fmt: skip
    assert result.records == n == len(result.rows) + len(result.rejects)
    (bad,) = [r for r in result.rejects if r.line == 5]
    assert bad.reason.startswith("unreadable row") and "utf" in bad.reason.lower()
    assert len(result.rows) == n - 1
    _no_tmp_left(tmp_path)


def flip_text_bytes_and_import(folder: str, trials: int) -> None:
    """Run in a child process (a corrupt Arrow buffer could crash pyarrow, not just raise): flip one random byte at a
    time in and around the text column's cells (its offsets and UTF-8 data) and import; each import must account
    for every row (a kept row or a reject with its reason) or stop with InputError naming the table."""
    table_file = Path(folder) / "data-00000-of-00001.arrow"
    original = table_file.read_bytes()
    region = [p for m in re.finditer(b"words ", original) for p in range(m.start() - 40, m.start() + 7)]
    rng = np.random.default_rng(0)
    for trial in range(trials):
        data = bytearray(original)
        data[region[int(rng.integers(len(region)))]] ^= int(rng.integers(1, 256))
        table_file.write_bytes(bytes(data))
        try:
            result = import_hf(folder, Path(folder).parent / "f.jsonl", Path(folder).parent / "f_rejects.jsonl",
                               min_ref_seconds=0.5, max_ref_seconds=2.0, show_progress=False)  # fmt: skip
        except InputError:
            continue  # the table as a whole is unreadable: one error line naming the file
        assert result.records == len(result.rows) + len(result.rejects), trial
        assert all(r.reason for r in result.rejects), trial
    print("survived", trials)


def test_hf_random_byte_flips_in_string_cells_never_crash(tmp_path) -> None:
    n = 8
    _save_to_disk_folder(tmp_path / "ds", _audio_table(pa.array([f"words {i}" for i in range(n)]), n))
    code = ("from tests.integration.test_hostile_inputs import flip_text_bytes_and_import as flip; "
            f"flip({str(tmp_path / 'ds')!r}, 100)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=command_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "survived 100" in proc.stdout, (proc.returncode, proc.stderr[-3000:])
    _no_tmp_left(tmp_path)


def test_hf_path_cells_stay_inside_the_table_folder(tmp_path) -> None:
    folder = tmp_path / "corpus" / "ds"
    outside = tmp_path / "corpus" / "outside.wav"
    outside.parent.mkdir(parents=True)
    outside.write_bytes(_wav_bytes(1.0, 7))
    paths = ["wavs/in0.wav", "wavs/in1.wav", "wavs/../wavs/in2.wav", "../outside.wav", "wavs/../../outside.wav",
             str(outside), "wavs/" + "n" * 300 + ".wav"]  # fmt: skip
    audio = pa.array([{"bytes": None, "path": p} for p in paths], pa.struct([("bytes", pa.binary()),
                                                                              ("path", pa.string())]))  # fmt: skip
    table = pa.table({"audio": audio, "text": pa.array([f"t{i}" for i in range(len(paths))]),
                      "speaker": pa.array(["s"] * len(paths))})  # fmt: skip
    _save_to_disk_folder(folder, table)
    for i in range(3):
        (folder / "wavs").mkdir(exist_ok=True)
        (folder / "wavs" / f"in{i}.wav").write_bytes(_wav_bytes(1.0 + 0.1 * i, i))
    kwargs = dict(min_ref_seconds=0.5, max_ref_seconds=2.0, show_progress=False)
    result = import_hf(folder, tmp_path / "m.jsonl", **kwargs)
    reasons = {r.line: r.reason for r in result.rejects}
    assert sorted(reasons) == [3, 4, 5, 6] and result.records == len(paths)
    assert "leads outside the table's folder" in reasons[3] and "leads outside" in reasons[4]
    assert "is absolute; pass --allow-absolute-paths" in reasons[5]
    assert "File name too long" in reasons[6]
    allowed = import_hf(folder, tmp_path / "m2.jsonl", allow_absolute_paths=True, **kwargs)
    assert sorted(r.line for r in allowed.rejects) == [3, 4, 6]
    # The flag on the command line.
    cmd = [sys.executable, "-m", "data_pipeline.importers", "hf", str(folder), "--out", str(tmp_path / "m3.jsonl"),
           "--min-ref-seconds", "0.5", "--max-ref-seconds", "2", "--allow-absolute-paths"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "rejected 3 of 7 records" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# ------------------------------------------------------------------------ run configs: one error line, found early


def _mismatched_model(folder: Path) -> Path:
    """A model folder (config.json + tokenizer, no weights) for an 8 x 1024 codec; the test codec is 4 x 256."""
    tokenizer = build_tiny_tokenizer()
    llm_config("tiny", len(tokenizer), SpecialTokenIds.from_tokenizer(tokenizer), AudioGeometry(8, 1024)
               ).save_pretrained(str(folder))  # fmt: skip
    tokenizer.save_pretrained(str(folder))
    return folder


def _missing_audio_manifest(assets, path: Path) -> Path:
    """Rows whose audio is gone: encoding them would reject every row (a bad-input error, exit 5), so an error
    reported instead was found before any encoding."""
    rows = [{**r, "audio": r["audio"] + ".gone"} for r in _good_rows(assets)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _bad_run(assets, tmp_path: Path, case: str) -> tuple[list[str], int, str]:
    """-> (extra train arguments, exit code, what the one error line must contain)."""
    plain = tmp_path / "plain_file"
    plain.write_text("x")
    if case == "output_dir_under_a_file":
        return [f"train.output_dir={plain / 'run'}"], 3, f"train.output_dir {plain / 'run'} is not a writable folder"
    if case == "output_dir_is_a_file":
        return [f"train.output_dir={plain}"], 3, f"train.output_dir {plain} is not a writable folder"
    if case == "deepspeed_json":
        ds = tmp_path / "ds.json"
        ds.write_text('{"zero_optimization": {"stage": 2},\n "bf16": {"enabled": tru}}\n')
        return [f"train.deepspeed_config={ds}"], 3, f"{ds} (train.deepspeed_config): invalid JSON at line 2, column"
    if case == "yaml_syntax":
        run = tmp_path / "run.yaml"
        run.write_text("train:\n  max_steps: 2\n lr: [\n")
        return ["--config", str(run)], 3, f"{run}: invalid YAML at line 3, column 2"
    if case == "missing_manifest":
        return [f"data.manifest={tmp_path / 'none.jsonl'}"], 4, f"data.manifest {tmp_path / 'none.jsonl'} does not"
    if case == "missing_eval_manifest":
        return [f"data.eval_manifest={tmp_path / 'e.jsonl'}"], 4, f"data.eval_manifest {tmp_path / 'e.jsonl'} does not"
    if case == "missing_codec":
        return [f"data.codec_path={tmp_path / 'c.pth'}"], 4, f"data.codec_path {tmp_path / 'c.pth'} does not exist"
    if case == "codebook_mismatch":
        model = _mismatched_model(tmp_path / "model_8x1024")
        manifest = _missing_audio_manifest(assets, tmp_path / "m.jsonl")
        return [f"model.path={model}", f"data.manifest={manifest}"], 3, f"model.path {model}: model has (num_codebooks"
    key, value, allowed = case.split(" ", 2)
    return [f"{key}={value}"], 3, f"{key} must be {allowed}"


@pytest.mark.parametrize("case", [
    "output_dir_under_a_file", "output_dir_is_a_file", "deepspeed_json", "yaml_syntax", "missing_manifest",
    "missing_eval_manifest", "missing_codec", "codebook_mismatch", "data.num_workers -1 >= 0", "train.log_every 0 >= 1",
    "train.save_every 0 >= 1", "train.max_steps 0 >= 1", "train.max_steps -5 >= 1", "train.warmup_steps -3 >= 0",
    "train.keep_last -1 >= 0", "train.gradient_clipping -1 >= 0",
])  # fmt: skip
def test_bad_run_config_is_one_error_line_naming_the_key_or_file(assets, tmp_path, case) -> None:
    extra, code, fragment = _bad_run(assets, tmp_path, case)
    cmd = [sys.executable, "-m", "ds_train", *train_args(assets, tmp_path / "out"), "data.num_workers=0",
           "train.max_steps=2", *extra]  # fmt: skip
    if "--config" in extra:  # replace the demo config
        i = cmd.index("--config")
        del cmd[i : i + 2]
    proc = subprocess.run(cmd, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == code, f"{proc.returncode}: {proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, last
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [last]


def test_prepare_with_a_run_config_checks_the_model_codebooks_before_encoding(assets, tmp_path) -> None:
    model = _mismatched_model(tmp_path / "model_8x1024")
    run = tmp_path / "run.yaml"
    run.write_text(f"model:\n  path: {model.name}\nwhisper:\n  enabled: false\n")  # relative to the YAML's folder
    manifest = _missing_audio_manifest(assets, tmp_path / "m.jsonl")
    cmd = [sys.executable, "-m", "data_pipeline.prepare", "--manifest", str(manifest), "--codec", "dac",
           "--codec-path", str(assets.codec_file), "--out", str(tmp_path / "prep"), "--device", "cpu",
           "--run-config", str(run)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --run-config {run}: model.path {model.name}: model has (num_codebooks"), last
    assert "(8, 1026, 1024, 1025) but the codec gives (4, 258, 256, 257)" in last
    assert not list((tmp_path / "prep").glob("utt-*"))  # nothing encoded


def test_demo_without_evaluation_finishes_and_says_the_gain_was_not_measured(tmp_path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "ds_train", "demo", "--steps", "2", "--output-dir", str(out), "train.eval_every=0",
           "data.num_workers=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Conditioning gain, training voices: not measured" in proc.stdout
    assert "Conditioning gain, held-out voices: not measured" in proc.stdout
    assert "(latest: global_step2)" in proc.stdout and (out / "run" / "checkpoints" / "global_step2").is_dir()
