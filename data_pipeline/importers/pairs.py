"""Pairs importer: an `audio|text|speaker` metadata file (or a folder holding `metadata.csv` / `metadata.txt`) ->
manifest rows, pairing every utterance with another utterance of the same speaker as its voice reference.

The file is read with the manifest's line reader: a line that is not UTF-8 or is too long is a reject naming its
line, like a line with the wrong number of fields; every line, blank ones included, is a row or a reject. The pairing
itself (`pair_utterances`) works on any list of `Utterance`s, so the corpus importers (`hf`, `webdataset`) share it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from data_pipeline.errors import UsageError
from data_pipeline.importers.common import ImportResult, manifest_path, require_file, write_result
from data_pipeline.ingest.manifest import Reject, text_lines
from data_pipeline.progress import Progress

METADATA_NAMES = ("metadata.csv", "metadata.txt")


@dataclass(frozen=True)
class Utterance:
    """One usable utterance before pairing; `source` and `line` (its position there) name it in a reject."""

    source: str
    line: int
    id: str
    audio: str  # as written into the manifest
    text: str
    speaker: str
    seconds: float


def _metadata_file(corpus: Path) -> Path:
    if corpus.is_dir():
        for name in METADATA_NAMES:
            if (corpus / name).is_file():
                return corpus / name
        raise FileNotFoundError(f"{corpus}: folder has no {' or '.join(METADATA_NAMES)}")
    return require_file(corpus)


def _utterance_id(absolute: Path, corpus_dir: Path) -> str:
    """The audio path relative to the corpus folder, without suffix: unique and readable (e.g. wavs/LJ001-0001)."""
    try:
        rel = Path(os.path.relpath(absolute, os.path.abspath(corpus_dir)))
    except ValueError:  # different drives on Windows
        rel = Path("..")
    stem = rel.with_suffix("") if rel.parts[:1] != ("..",) else absolute.with_suffix("")
    return stem.as_posix()


def _read_corpus(meta: Path, manifest_dir: Path, show_progress: bool = True) -> tuple[list[Utterance], list[Reject]]:
    utterances: list[Utterance] = []
    rejects: list[Reject] = []
    source = str(meta)
    seen_audio: dict[Path, int] = {}
    seen_ids: set[str] = set()
    # Every line becomes an utterance or a reject, blank ones included, so callers can reconcile counts.
    with Progress(None, "pairs import", "lines", show_progress) as bar:  # each line's audio is read
        for line_no, line in text_lines(meta):
            bar.update()
            if isinstance(line, Reject):
                rejects.append(line)
                continue
            if not line.strip():
                rejects.append(Reject(source, line_no, None, "blank line"))
                continue
            fields = [f.strip() for f in line.split("|")]
            if len(fields) != 3:
                rejects.append(Reject(source, line_no, None, f"expected 3 '|'-separated fields, got {len(fields)}"))
                continue
            audio_raw, text, speaker = fields
            empty = [n for n, v in zip(("audio", "text", "speaker"), fields, strict=True) if not v]
            if empty:
                rejects.append(Reject(source, line_no, None, f"empty fields: {', '.join(empty)}"))
                continue
            written, absolute = manifest_path(audio_raw, meta.parent, manifest_dir)
            utt_id = _utterance_id(absolute, meta.parent)
            if absolute in seen_audio:
                first = seen_audio[absolute]
                rejects.append(Reject(source, line_no, utt_id, f"duplicate audio (first on line {first})"))
                continue
            if utt_id in seen_ids:
                rejects.append(Reject(source, line_no, utt_id, "duplicate id"))
                continue
            if not absolute.is_file():
                rejects.append(Reject(source, line_no, utt_id, f"audio not found: {absolute}"))
                continue
            try:
                info = sf.info(str(absolute))
            except (sf.LibsndfileError, RuntimeError) as err:
                rejects.append(Reject(source, line_no, utt_id, f"unreadable audio {absolute}: {err}"))
                continue
            if info.frames <= 0 or info.samplerate <= 0:
                rejects.append(Reject(source, line_no, utt_id, f"zero-length audio: {absolute}"))
                continue
            seen_audio[absolute] = line_no
            seen_ids.add(utt_id)
            utterances.append(Utterance(source, line_no, utt_id, written, text, speaker, info.frames / info.samplerate))
    return utterances, rejects


def check_ref_limits(min_ref_seconds: float, max_ref_seconds: float) -> None:
    if min_ref_seconds < 0 or max_ref_seconds < min_ref_seconds:
        raise UsageError(f"need 0 <= min_ref_seconds <= max_ref_seconds, got {min_ref_seconds}, {max_ref_seconds}")


def pair_utterances(
    utterances: Sequence[Utterance], seed: int = 0, min_ref_seconds: float = 3.0, max_ref_seconds: float = 15.0
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Give every utterance (ids unique) a reference: another utterance of its speaker lasting [min, max] seconds.

    -> (manifest rows in the utterances' order, one Reject per utterance whose speaker has no other usable reference).
    The choice depends only on the seed, the utterance's id and its speaker's eligible ids (sorted), so the pairing is
    reproducible and does not change with input or file-system order.
    """
    check_ref_limits(min_ref_seconds, max_ref_seconds)
    eligible: dict[str, list[Utterance]] = {}
    for utt in utterances:
        if min_ref_seconds <= utt.seconds <= max_ref_seconds:
            eligible.setdefault(utt.speaker, []).append(utt)
    position: dict[str, int] = {}
    for refs in eligible.values():
        refs.sort(key=lambda u: u.id)
        position.update((u.id, i) for i, u in enumerate(refs))

    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for utt in utterances:
        refs = eligible.get(utt.speaker, [])
        own = position.get(utt.id)  # ids are unique, so a hit is this utterance's slot in its speaker's list
        choices = len(refs) - (own is not None)
        if choices == 0:
            reason = f"speaker {utt.speaker!r} has no other utterance lasting {min_ref_seconds:g}-{max_ref_seconds:g} s"
            rejects.append(Reject(utt.source, utt.line, utt.id, reason))
            continue
        # Seeding with a string is stable across processes (unlike hash()), and per-utterance RNGs keep each choice
        # independent of how many other utterances came before it.
        pick = random.Random(f"{seed}\x00{utt.speaker}\x00{utt.id}").randrange(choices)
        if own is not None and pick >= own:
            pick += 1  # skip the utterance itself without building a filtered list (O(1) per utterance)
        ref = refs[pick]
        rows.append(
            {
                "id": utt.id,
                "ref_audio": ref.audio,
                "ref_text": ref.text,
                "audio": utt.audio,
                "text": utt.text,
                "speaker": utt.speaker,
                "ref_id": ref.id,
            }
        )
    return rows, rejects


def pair_corpus(
    corpus: str | Path,
    manifest_dir: str | Path,
    seed: int = 0,
    min_ref_seconds: float = 3.0,
    max_ref_seconds: float = 15.0,
    show_progress: bool = True,
) -> ImportResult:
    """Read an `audio|text|speaker` corpus and pair it (`pair_utterances`); rows and rejects together cover every
    line, rows in line order."""
    check_ref_limits(min_ref_seconds, max_ref_seconds)
    meta = _metadata_file(Path(corpus))
    utterances, rejects = _read_corpus(meta, Path(manifest_dir), show_progress)
    rows, unpaired = pair_utterances(utterances, seed, min_ref_seconds, max_ref_seconds)
    rejects += unpaired
    rejects.sort(key=lambda r: r.line)
    return ImportResult(rows, rejects)


def import_pairs(
    corpus: str | Path,
    out: str | Path,
    rejects_path: str | Path | None = None,
    seed: int = 0,
    min_ref_seconds: float = 3.0,
    max_ref_seconds: float = 15.0,
    show_progress: bool = True,
) -> ImportResult:
    """Pair an `audio|text|speaker` corpus and write the manifest (+ rejects with a 1-based `line` key)."""
    result = pair_corpus(corpus, Path(out).parent, seed, min_ref_seconds, max_ref_seconds, show_progress)
    write_result(result, out, rejects_path, position_key="line")
    return result
