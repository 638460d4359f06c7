"""What the corpus importers (`hf`, `webdataset`) share: each streamed record's audio is written to a file under the
audio folder, its transcript and speaker are kept for pairing (`pairs.pair_utterances`), a bad record is a reject.

Audio is kept as the source's encoded bytes when soundfile (what `prepare` reads audio with) can open them; a raw
sample array is written as a 16-bit wav. The check opens the header and decodes the first block, not the whole file,
so that an import of thousands of hours stays I/O bound; `prepare` rejects a file that breaks further in.

Audio files follow the path convention of `common`: a relative audio folder (the default, `<out stem>_audio` next to
the manifest) is written relative to the manifest's folder, an absolute one stays absolute. A file already there
with the same size is kept (not rewritten), so an interrupted import resumes quickly.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from data_pipeline.importers.common import BadEntry, ImportResult, check_row, manifest_path, write_result
from data_pipeline.importers.pairs import Utterance, pair_utterances
from data_pipeline.ingest.manifest import Reject, type_name
from data_pipeline.progress import Progress

# soundfile's format name -> file extension (anything else: the format name, lower-cased).
EXTENSIONS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "FLAC": "flac", "MP3": "mp3", "AIFF": "aiff"}
# Frames decoded to prove the audio is not just a plausible header.
PROBE_FRAMES = 4096
# File names stay well under the 255-byte limit of common file systems (the hash suffix and extension come on top).
MAX_NAME_CHARS = 150
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ExtractResult(ImportResult):
    """An import that wrote audio files: rows and rejects cover every record."""

    records: int = 0
    audio_dir: str = ""
    written: int = 0  # audio files written by this run
    kept: int = 0  # audio files already there with the same size (a resumed run)

    def summary(self) -> str:
        return (
            f"converted {len(self.rows)}, rejected {len(self.rejects)} of {self.records} records; "
            f"audio in {self.audio_dir} ({self.written} written, {self.kept} already there)"
        )


@dataclass(frozen=True)
class EncodedAudio:
    """An audio file's bytes; `name` (the source's file name, may be empty) only labels it in a reject."""

    data: bytes
    name: str = ""


@dataclass(frozen=True)
class RawAudio:
    """Decoded samples (mono `(n,)` or `(n, channels)`) and their rate."""

    samples: np.ndarray
    sampling_rate: int


def default_audio_dir(out: str | Path) -> Path:
    """`<out stem>_audio` next to the manifest, relative when `out` is, so the two move together."""
    out = Path(out)
    return out.parent / f"{out.stem}_audio"


def corpus_name(item: str | Path) -> str:
    """A corpus's name from its first input (`/data/EN-B{000..009}.tar.gz` -> `EN-B`): the speaker of a corpus
    imported without speakers."""
    return Path(str(item).split("{")[0]).name.split(".")[0] or "speaker"


def progress(show_progress: bool, desc: str) -> Progress:
    """Records imported so far on stderr: a bar in a terminal, a plain line every 30 s in a log."""
    return Progress(None, desc, "rec", show_progress)


def text_value(value: Any, name: str) -> str:
    """A transcript or other required string field, stripped; BadEntry when missing, empty or not a string."""
    if value is None:
        raise BadEntry(f"{name} is missing (null)")
    if not isinstance(value, str):
        raise BadEntry(f"{name} is {type_name(value)}, expected a string")
    if not value.strip():
        raise BadEntry(f"{name} is empty")
    return value.strip()


def label_value(value: Any, name: str) -> str:
    """A speaker or id: a string or an integer (speaker ids often are), as a non-empty string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text_value(value, name)


def _probe(audio: EncodedAudio) -> tuple[str, float]:
    """-> (file extension, seconds) of encoded audio soundfile can read; BadEntry with the reason otherwise."""
    what = f"audio {audio.name}" if audio.name else "audio"
    if not audio.data:
        raise BadEntry(f"{what} is empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(audio.data)) as f:
            frames, rate, fmt, subtype = f.frames, f.samplerate, f.format, f.subtype
            f.read(min(frames, PROBE_FRAMES), dtype="float32")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise BadEntry(f"unsupported or undecodable {what} ({err})") from None
    if frames <= 0 or rate <= 0:
        raise BadEntry(f"{what} has no samples")
    ext = "opus" if fmt == "OGG" and subtype == "OPUS" else EXTENSIONS.get(fmt, fmt.lower())
    return ext, frames / rate


def _wav_bytes(audio: RawAudio) -> tuple[bytes, float]:
    """A raw sample array -> (16-bit wav bytes, seconds); BadEntry when it is not usable audio."""
    rate = audio.sampling_rate
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise BadEntry(f"audio sampling_rate is {rate!r}, expected a positive integer")
    try:
        samples = np.asarray(audio.samples)
    except ValueError:  # ragged nested lists
        raise BadEntry("audio array is ragged, not (frames,) or (frames, channels)") from None
    if samples.ndim == 2 and samples.shape[0] < samples.shape[1] and samples.shape[0] <= 8:
        samples = samples.T  # channel-first (as torch decoders give it) -> soundfile's (frames, channels)
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise BadEntry(f"audio array has shape {samples.shape}, expected (frames,) or (frames, channels)")
    if not (np.issubdtype(samples.dtype, np.number) and not np.issubdtype(samples.dtype, np.complexfloating)):
        raise BadEntry(f"audio array holds {samples.dtype} values, not real numbers")
    if samples.dtype != np.int16:
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples / np.iinfo(samples.dtype).max  # other integer PCM widths -> [-1, 1]
        samples = samples.astype(np.float32)
        if not np.isfinite(samples).all():
            raise BadEntry("audio array holds NaN or infinite samples")
        samples = np.clip(samples, -1.0, 1.0)  # libsndfile would wrap, not clip, out-of-range floats written as PCM
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue(), samples.shape[0] / rate


def _encode(audio: EncodedAudio | RawAudio) -> tuple[bytes, str, float]:
    """-> (file bytes, extension, seconds): encoded audio kept as it is, raw samples as a 16-bit wav."""
    if isinstance(audio, RawAudio):
        data, seconds = _wav_bytes(audio)
        return data, "wav", seconds
    ext, seconds = _probe(audio)
    return audio.data, ext, seconds


def safe_name(record_id: str) -> str:
    """A portable file name for an id: unsafe characters (path separators included) -> `_`, length capped."""
    name = _UNSAFE.sub("_", record_id).lstrip(".") or "_"
    return name[:MAX_NAME_CHARS]


class CorpusWriter:
    """Turns streamed records into audio files + utterances, or rejects; `result` pairs them into manifest rows."""

    def __init__(self, out: str | Path, audio_dir: str | Path | None, position_key: str) -> None:
        self.out = Path(out)
        self.manifest_dir = self.out.parent
        if audio_dir in (None, ""):
            # The default folder sits next to the manifest and is written relative to it, so the two move together.
            self.audio_dir = default_audio_dir(self.out)
            self._raw_dir, self._base = self.audio_dir.name, self.manifest_dir
        else:  # the path convention: absolute stays absolute, relative (to the working folder) is made relative
            self.audio_dir = Path(audio_dir)
            self._raw_dir, self._base = str(audio_dir), Path.cwd()
        self.position_key = position_key
        self.utterances: list[Utterance] = []
        self.rejects: list[Reject] = []
        self.records = 0
        self.written = 0
        self.kept = 0
        # Per-record state stays small (an int, a name): a corpus may hold tens of millions of records.
        self._sources: dict[str, int] = {}  # source -> its rank in reading order, to sort rejects
        self._first: dict[str, int] = {}  # accepted id -> its index in `utterances`
        self._names: set[str] = set()  # file names in use (case-folded: some file systems ignore case)

    def reject(self, source: str, position: int, record_id: str | None, reason: str) -> None:
        self._count(source)
        self.rejects.append(Reject(source, position, record_id, reason))

    def add(
        self, source: str, position: int, record_id: str, audio: EncodedAudio | RawAudio, text: str, speaker: str
    ) -> None:
        """Write one record's audio and keep it for pairing; a bad record becomes a reject instead."""
        if record_id in self._first:
            first = self.utterances[self._first[record_id]]
            self.reject(source, position, record_id, f"duplicate id (first at {first.source} {self.position_key} "
                        f"{first.line})")  # fmt: skip
            return
        try:
            # The same checks the manifest reader makes, on a stand-in row with this record's strings.
            check_row({"id": record_id, "ref_audio": "x", "ref_text": text, "audio": "x", "text": text,
                       "speaker": speaker})  # fmt: skip
            data, ext, seconds = _encode(audio)
        except BadEntry as err:
            self.reject(source, position, record_id, str(err))
            return
        written = self._write(self._file_name(record_id, ext), data)
        self._count(source)
        self._first[record_id] = len(self.utterances)
        self.utterances.append(Utterance(source, position, record_id, written, text, speaker, seconds))

    def result(self, seed: int, min_ref_seconds: float, max_ref_seconds: float) -> ExtractResult:
        """Pair the kept utterances; rows in record order, rejects in record order too."""
        rows, unpaired = pair_utterances(self.utterances, seed, min_ref_seconds, max_ref_seconds)
        rejects = sorted(self.rejects + unpaired, key=lambda r: (self._sources[r.source], r.line))
        return ExtractResult(rows, rejects, self.records, str(self.audio_dir), self.written, self.kept)

    def _count(self, source: str) -> None:
        self._sources.setdefault(source, len(self._sources))
        self.records += 1

    def _file_name(self, record_id: str, ext: str) -> str:
        name = safe_name(record_id)
        if name != record_id or name.casefold() in self._names:
            # Two ids can map to one name (`a/b`, `a_b`; `A`, `a`): a hash of the id keeps them apart, the same on
            # every run, so a resumed import finds its own files again.
            name = f"{name}-{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:10]}"
        self._names.add(name.casefold())
        return f"{name}.{ext}"

    def _write(self, name: str, data: bytes) -> str:
        """Write (or keep) the file; -> its path as written into the manifest."""
        written, absolute = manifest_path(os.path.join(self._raw_dir, name), self._base, self.manifest_dir)
        if absolute.is_file() and absolute.stat().st_size == len(data):
            self.kept += 1
            return written
        absolute.parent.mkdir(parents=True, exist_ok=True)
        tmp = absolute.with_name(absolute.name + ".tmp")
        tmp.write_bytes(data)
        # Rename so an interrupted run never leaves a truncated file that a resumed run might keep.
        os.replace(tmp, absolute)
        self.written += 1
        return written


def finish(
    writer: CorpusWriter,
    rejects_path: str | Path | None,
    position_key: str,
    seed: int,
    min_ref_seconds: float,
    max_ref_seconds: float,
) -> ExtractResult:
    """Pair, write the manifest (+ rejects with `position_key`) and return the result."""
    result = writer.result(seed, min_ref_seconds, max_ref_seconds)
    write_result(result, writer.out, rejects_path, position_key=position_key)
    return result
