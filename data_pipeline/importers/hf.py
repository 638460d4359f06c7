"""Hugging Face importer: a `datasets` folder (`Dataset.save_to_disk`; for a `DatasetDict` folder, one split), Parquet
files or a folder of them (the Hub's layout, e.g. LibriTTS-R) -> audio files + a manifest pairing every utterance with
another utterance of the same speaker as its voice reference (`pairs.pair_utterances`).

The tables are read with pyarrow in small record batches (Arrow files memory-mapped), so the corpus is never held in
memory, and never decoded by `datasets` (no torchcodec or ffmpeg needed): the audio column holds the `Audio` feature's
`{bytes, path}` and the encoded bytes are written as they are (see `extract`); a path without bytes is read from
disk, relative to the table's folder and never outside it (absolute paths only with `--allow-absolute-paths`); a
decoded `{array, sampling_rate}` becomes a 16-bit wav. `Reject.line` holds the 0-based row in its table file. A table
without the named columns, or one that is not Parquet/Arrow, is an `InputError` naming the file; a bad row (corrupt
cells included) is a reject.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.errors import InputError, UsageError
from data_pipeline.importers.common import BadEntry
from data_pipeline.importers.extract import (
    CorpusWriter,
    EncodedAudio,
    ExtractResult,
    RawAudio,
    corpus_name,
    finish,
    label_value,
    progress,
    text_value,
)
from data_pipeline.importers.pairs import check_ref_limits
from data_pipeline.ingest.manifest import type_name

# Rows turned into Python objects at a time: audio cells are large (a 10 s wav is ~0.5 MB), and `datasets` writes
# Arrow batches of up to 1000 rows.
ROWS_PER_CHUNK = 32
# The Hub's Parquet shard names: `<split>-00000-of-00004.parquet`.
HUB_SHARD = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.parquet$")


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err})") from None


def _saved_dataset_tables(folder: Path) -> list[Path]:
    """The Arrow files of a `save_to_disk` folder, in row order (state.json lists them)."""
    state = _json_file(folder / "state.json")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str)
                                              for f in files):  # fmt: skip
        raise InputError(f"{folder / 'state.json'}: no '_data_files' list; is this a `save_to_disk` folder?")
    tables = [folder / f["filename"] for f in files]
    for table in tables:
        if not table.is_file():
            raise FileNotFoundError(f"{table}: listed in {folder / 'state.json'} but not found")
    return tables


def _parquet_folder_tables(folder: Path, split: str) -> list[Path]:
    """The Parquet files under a folder, sorted; with Hub shard names, only those of `split`."""
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no Parquet files, state.json (`save_to_disk`) or dataset_dict.json")
    splits = {m.group("split") for f in files if (m := HUB_SHARD.match(f.name))}
    if not splits:
        return files
    chosen = [f for f in files if (m := HUB_SHARD.match(f.name)) and m.group("split") == split]
    if not chosen:
        raise UsageError(f"{folder}: no Parquet shards of split {split!r} (splits: {', '.join(sorted(splits))}); "
                         "pick one with --split")  # fmt: skip
    return chosen


def find_tables(inputs: Sequence[str | Path], split: str = "train") -> list[Path]:
    """The table files (Parquet or Arrow) behind the inputs, in order; see the module docstring for what is read."""
    tables: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found")
        if path.is_file():
            tables.append(path)
        elif (path / "dataset_dict.json").is_file():
            names = _json_file(path / "dataset_dict.json")
            names = names.get("splits") if isinstance(names, dict) else None
            if not isinstance(names, list) or split not in names:
                raise UsageError(f"{path}: a DatasetDict without split {split!r} (splits: "
                                 f"{', '.join(map(str, names or []))}); pick one with --split")  # fmt: skip
            tables += _saved_dataset_tables(path / split)
        elif (path / "state.json").is_file():
            tables += _saved_dataset_tables(path)
        else:
            tables += _parquet_folder_tables(path, split)
    return tables


def _check_columns(path: Path, schema: pa.Schema, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise UsageError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(schema.names)}); "
                         "name the right ones with --audio-column, --text-column, ...")  # fmt: skip


def _table_batches(path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file (only `columns` read) or an Arrow file (`datasets` writes the IPC stream
    format; memory-mapped, so a batch costs no copy until its cells are converted)."""
    if path.suffix != ".arrow":
        try:
            parquet = pq.ParquetFile(str(path))
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: not a Parquet file ({err})") from None
        _check_columns(path, parquet.schema_arrow, columns)
        yield from parquet.iter_batches(batch_size=ROWS_PER_CHUNK, columns=list(columns))
        return
    source = pa.memory_map(str(path))
    try:
        stream = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        try:
            whole = pa.ipc.open_file(source)
        except pa.ArrowInvalid as err:
            raise InputError(f"{path}: not an Arrow file ({err})") from None
        _check_columns(path, whole.schema, columns)
        yield from (whole.get_batch(i) for i in range(whole.num_record_batches))
        return
    _check_columns(path, stream.schema, columns)
    yield from stream


def _cells(chunk: pa.RecordBatch, columns: Sequence[str]) -> dict[str, list[Any]]:
    """The named columns of a chunk as Python lists, after a full check of their buffers (string cells must be valid
    UTF-8, offsets inside their data): a corrupt table must not make Python decode garbage."""
    for c in columns:
        chunk.column(c).validate(full=True)
    return {c: chunk.column(c).to_pylist() for c in columns}


def _row_or_problem(chunk: pa.RecordBatch, i: int, columns: Sequence[str]) -> dict[str, Any] | str:
    """Row `i` of a chunk that failed its check -> its values, or the reason it is unreadable."""
    try:
        return {c: values[0] for c, values in _cells(chunk.slice(i, 1), columns).items()}
    except (pa.ArrowException, UnicodeDecodeError, SystemError, ValueError) as err:
        return f"unreadable row ({type(err).__name__}: {err})"


def _rows(path: Path, columns: Sequence[str]) -> Iterator[dict[str, Any] | str]:
    """The named columns of each row as Python values, a few rows at a time; a row whose cells are corrupt (invalid
    UTF-8 in a string, offsets outside the data) comes as the reason it cannot be read, the rows around it as values."""
    row = 0
    try:
        for batch in _table_batches(path, columns):
            for start in range(0, batch.num_rows, ROWS_PER_CHUNK):
                chunk = batch.slice(start, ROWS_PER_CHUNK)
                try:
                    values = _cells(chunk, columns)
                except (pa.ArrowException, UnicodeDecodeError, SystemError, ValueError):
                    for i in range(chunk.num_rows):  # find the bad rows one by one
                        yield _row_or_problem(chunk, i, columns)
                        row += 1
                    continue
                for i in range(chunk.num_rows):
                    yield {c: values[c][i] for c in columns}
                    row += 1
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: unreadable at row {row} ({err})") from None


def _local_audio(path: str, table_dir: Path, allow_absolute: bool) -> Path:
    """A path cell -> the file it names: relative paths resolve under the table's folder and may not leave it (as
    WebDataset member names stay inside --audio-dir); an absolute one only with `allow_absolute`."""
    if os.path.isabs(path):
        if not allow_absolute:
            raise BadEntry(f"audio path {path!r} is absolute; pass --allow-absolute-paths to read files outside the "
                           "table's folder")  # fmt: skip
        return Path(path)
    folder = os.path.abspath(table_dir)
    local = os.path.normpath(os.path.join(folder, path))  # lexical: symlinked caches (the Hub's blobs) still work
    if os.path.commonpath([folder, local]) != folder:
        raise BadEntry(f"audio path {path!r} leads outside the table's folder {folder}")
    return Path(local)


def _audio(value: Any, table_dir: Path, allow_absolute: bool = False) -> EncodedAudio | RawAudio:
    """An audio cell -> encoded bytes or raw samples; BadEntry when there is no audio to take."""
    if value is None:
        raise BadEntry("audio is missing (null)")
    if isinstance(value, bytes):
        return EncodedAudio(value)
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise BadEntry(f"audio is {type_name(value)}, expected the Audio feature's {{bytes, path}}")
    if value.get("array") is not None:
        return RawAudio(value["array"], value.get("sampling_rate"))
    path = value.get("path")
    name = os.path.basename(path) if isinstance(path, str) else ""
    if value.get("bytes"):
        return EncodedAudio(value["bytes"], name)
    if not isinstance(path, str) or not path:
        raise BadEntry("audio has neither bytes nor a path")
    if "\x00" in path:
        raise BadEntry(f"audio path {path!r} holds a NUL character")
    local = _local_audio(path, table_dir, allow_absolute)
    try:
        if not local.is_file():
            raise BadEntry(f"audio has no bytes and its path {path!r} is not a file")
        return EncodedAudio(local.read_bytes(), name)
    except OSError as err:  # a name too long, a file not readable
        raise BadEntry(f"audio path {path!r} cannot be read ({err.strerror or err})") from None


def import_hf(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    rejects_path: str | Path | None = None,
    audio_dir: str | Path | None = None,
    split: str = "train",
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = "speaker",
    id_column: str | None = None,
    seed: int = 0,
    min_ref_seconds: float = 3.0,
    max_ref_seconds: float = 15.0,
    show_progress: bool = True,
    allow_absolute_paths: bool = False,
) -> ExtractResult:
    """Extract the audio of Hugging Face tables to `audio_dir` (default `<out stem>_audio`) and write the paired
    manifest (+ rejects with a 0-based `row` key). A path cell (audio without bytes) is read under its table's folder;
    rows whose path leaves it are rejects, and so are absolute paths unless `allow_absolute_paths`.

    Without `speaker_column` the corpus is one speaker, named after the first input. Without `id_column` a row's id is
    `<table path without suffix>_<row>` (the path relative to the tables' common folder).
    """
    check_ref_limits(min_ref_seconds, max_ref_seconds)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not inputs:
        raise UsageError("no input given")
    tables = find_tables(inputs, split)
    speaker_column, id_column = speaker_column or None, id_column or None
    columns = [c for c in (audio_column, text_column, speaker_column, id_column) if c is not None]
    single_speaker = corpus_name(inputs[0])
    root = os.path.commonpath([os.path.abspath(t.parent) for t in tables])
    writer = CorpusWriter(out, audio_dir, "row")
    with progress(show_progress, "hf import") as bar:
        for table in tables:
            source = str(table)
            label = Path(os.path.relpath(os.path.abspath(table), root)).with_suffix("").as_posix()
            row = 0
            try:
                for row, values in enumerate(_rows(table, columns)):
                    record_id = None
                    if isinstance(values, str):
                        writer.reject(source, row, None, values)
                        bar.update()
                        row += 1
                        continue
                    try:
                        record_id = label_value(values[id_column], "id") if id_column else f"{label}_{row}"
                        text = text_value(values[text_column], "text")
                        speaker = label_value(values[speaker_column], "speaker") if speaker_column else single_speaker
                        audio = _audio(values[audio_column], table.parent, allow_absolute_paths)
                    except BadEntry as err:
                        writer.reject(source, row, record_id, str(err))
                    else:
                        writer.add(source, row, record_id, audio, text, speaker)
                    bar.update()
                    row += 1
            except InputError as err:
                # A corrupt table file costs its unreadable rest, not the import (a missing column, a UsageError,
                # still stops it: every table would miss it).
                writer.reject(source, row, None, f"{err}; the rows before it were kept")
    return finish(writer, rejects_path, "row", seed, min_ref_seconds, max_ref_seconds)
