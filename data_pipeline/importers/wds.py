"""WebDataset importer: tar shards (Emilia style: per key an audio member such as `KEY.mp3` and a `KEY.json` holding
the transcript and speaker) -> audio files + a manifest pairing every utterance with another utterance of the same
speaker as its voice reference (`pairs.pair_utterances`).

Each tar is streamed (`tarfile` mode `r|*`, compressed or not), one sample in memory at a time. A sample is a run of
consecutive members sharing a key (the member path up to the first dot of its file name, as WebDataset groups them).
`Reject.line` holds the 0-based sample index in its tar and `Reject.id` the key. A sample without audio or `.json`, with
JSON that is not an object or lacks the text, with audio soundfile cannot read, or with a key seen before, is a reject;
a file that is not a tar (or breaks off) is an `InputError` naming it.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from braceexpand import braceexpand  # installed with webdataset

from data_pipeline.errors import InputError, UsageError
from data_pipeline.importers.common import BadEntry
from data_pipeline.importers.extract import (
    CorpusWriter,
    EncodedAudio,
    ExtractResult,
    corpus_name,
    finish,
    label_value,
    progress,
    text_value,
)
from data_pipeline.importers.pairs import check_ref_limits
from data_pipeline.ingest.manifest import decode_utf8, describe_decode_error, parse_json, type_name

# Member extensions taken as the sample's audio; soundfile reads most (a format it cannot, e.g. m4a, is a reject).
AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "m4a", "aac", "webm", "aiff", "aif", "au", "caf", "w64")
SHARD_PATTERNS = ("*.tar", "*.tar.gz", "*.tgz")


def find_shards(inputs: Sequence[str | Path]) -> list[Path]:
    """Tar files, folders (their `.tar`/`.tar.gz`/`.tgz` files, sorted) and brace patterns (`shard-{000..009}.tar`),
    expanded in order."""
    shards: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists() and "{" in str(item):
            expanded = [Path(p) for p in braceexpand(str(item))]
            missing = [p for p in expanded if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: not found ({len(missing)} of the {len(expanded)} "
                                        f"files of {item} missing)")  # fmt: skip
            shards += expanded
        elif path.is_dir():
            found = sorted({p for pattern in SHARD_PATTERNS for p in path.rglob(pattern)})
            if not found:
                raise FileNotFoundError(f"{path}: no tar shards ({', '.join(SHARD_PATTERNS)})")
            shards += found
        elif path.is_file():
            shards.append(path)
        else:
            raise FileNotFoundError(f"{path}: not found")
    return shards


def split_name(name: str) -> tuple[str, str]:
    """Member name -> (key, extension): `dir/a.b.json` -> (`dir/a`, `b.json`); no dot -> (name, "")."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _samples(path: Path) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(member name, bytes), ...]) for each run of consecutive file members sharing a key."""
    key = ""
    members: list[tuple[str, bytes]] = []
    done = 0
    try:
        with tarfile.open(str(path), mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key = split_name(info.name)[0]
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
                if members and member_key != key:
                    yield key, members
                    done += 1
                    members = []
                key = member_key
                members.append((info.name, data))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: not a readable tar file after {done} samples ({err})") from None
    if members:
        yield key, members


def _parse_sample(
    members: list[tuple[str, bytes]], text_field: str, speaker_field: str | None
) -> tuple[EncodedAudio, str, str | None]:
    """A sample's members -> (audio, text, speaker or None); BadEntry with the reason."""
    by_ext: dict[str, tuple[str, bytes]] = {}
    for name, data in members:
        ext = split_name(name)[1].lower()
        if ext in by_ext:
            raise BadEntry(f"two members with extension .{ext} ({by_ext[ext][0]}, {name})")
        by_ext[ext] = (name, data)
    listed = ", ".join(name for name, _ in members)
    audio = [by_ext[ext] for ext in by_ext if ext.rpartition(".")[2] in AUDIO_EXTENSIONS]
    if not audio:
        raise BadEntry(f"no audio member (.{', .'.join(AUDIO_EXTENSIONS[:5])}, ...) among {listed}")
    if len(audio) > 1:
        raise BadEntry(f"several audio members: {', '.join(name for name, _ in audio)}")
    if "json" not in by_ext:
        raise BadEntry(f"no .json member among {listed}")
    json_name, raw = by_ext["json"]
    try:
        meta = parse_json(decode_utf8(raw, strip_bom=True))
    except UnicodeDecodeError as err:
        raise BadEntry(f"{json_name}: {describe_decode_error(err, f'byte offset {err.start}')}") from None
    except ValueError as err:
        raise BadEntry(f"{json_name}: {err}") from None
    if not isinstance(meta, dict):
        raise BadEntry(f"{json_name} is a JSON {type_name(meta)}, not an object")
    for field in (text_field, speaker_field):
        if field is not None and field not in meta:
            raise BadEntry(f"{json_name} has no {field!r} field (fields: {', '.join(map(str, meta))})")
    text = text_value(meta[text_field], f"{json_name} {text_field!r}")
    speaker = label_value(meta[speaker_field], f"{json_name} {speaker_field!r}") if speaker_field else None
    name, data = audio[0]
    return EncodedAudio(data, os.path.basename(name)), text, speaker


def import_webdataset(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    rejects_path: str | Path | None = None,
    audio_dir: str | Path | None = None,
    text_field: str = "text",
    speaker_field: str | None = "speaker",
    seed: int = 0,
    min_ref_seconds: float = 3.0,
    max_ref_seconds: float = 15.0,
    show_progress: bool = True,
) -> ExtractResult:
    """Extract the audio of WebDataset shards to `audio_dir` (default `<out stem>_audio`) and write the paired
    manifest (+ rejects with a 0-based `sample` key). The key is the row id; without `speaker_field` the corpus is
    one speaker, named after the first input."""
    check_ref_limits(min_ref_seconds, max_ref_seconds)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not inputs:
        raise UsageError("no input given")
    shards = find_shards(inputs)
    speaker_field = speaker_field or None
    single_speaker = corpus_name(inputs[0])
    writer = CorpusWriter(out, audio_dir, "sample")
    with progress(show_progress, "webdataset import") as bar:
        for shard in shards:
            source = str(shard)
            index = 0
            try:
                for index, (key, members) in enumerate(_samples(shard)):
                    try:
                        audio, text, speaker = _parse_sample(members, text_field, speaker_field)
                    except BadEntry as err:
                        writer.reject(source, index, key, str(err))
                    else:
                        writer.add(source, index, key, audio, text, speaker or single_speaker)
                    bar.update()
                    index += 1
            except InputError as err:
                # A truncated or corrupt shard (an interrupted download) costs its unreadable rest, not the import.
                writer.reject(source, index, None, f"{err}; the samples before it were kept")
    return finish(writer, rejects_path, "sample", seed, min_ref_seconds, max_ref_seconds)
