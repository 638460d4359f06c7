"""Convert other data layouts into our JSONL voice-cloning manifest (see `data_pipeline.manifest`).

python -m data_pipeline.importers chatml INPUT.json --out manifest.jsonl [--rejects rejects.jsonl] [--no-check-audio]
python -m data_pipeline.importers pairs CORPUS --out manifest.jsonl [--seed 0] [--min-ref-seconds 3]
                                  [--max-ref-seconds 15] [--rejects rejects.jsonl]
python -m data_pipeline.importers split manifest.jsonl --eval-speakers N | --eval-fraction F [--seed 0]
                                  --out train.jsonl --eval-out eval.jsonl [--rejects rejects.jsonl]

`chatml` reads the ChatML JSON list used by Higgs Audio fine-tuning scripts; `pairs` reads an `audio|text|speaker`
metadata file (or a folder holding `metadata.csv` / `metadata.txt`) and pairs every utterance with another utterance of
the same speaker as its voice reference; `split` holds out whole speakers of a manifest as an eval manifest
(`data.eval_manifest`), so the evaluation measures cloning of voices the model never trained on.

Path convention: an audio path given as absolute in the input stays absolute; a relative one (resolved against the
input file's folder) is written relative to the output manifest's folder, so a corpus and its manifest can be moved
together. Inputs that cannot be converted become rejects with their position and reason; one bad entry never stops the
import.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from data_pipeline.manifest import Reject, json_objects

SYSTEM_PREFIX = "Generate audio following instruction."
SCENE_MARKERS = ("<|scene_desc_start|>", "<|scene_desc_end|>")
ROLES = ("system", "user", "assistant")
# Keys a ChatML audio part may carry its path under, in order of preference.
AUDIO_KEYS = ("audio_url", "url", "raw_audio")
# ChatML top-level keys that map onto manifest fields; everything else is kept under "extra".
CHATML_KNOWN_KEYS = ("messages", "start_index", "speaker", "misc")
# Longer than any sane path: such a `raw_audio` is inline (base64) audio, which we do not decode.
MAX_PATH_CHARS = 1024
METADATA_NAMES = ("metadata.csv", "metadata.txt")


class InputError(ValueError):
    """The input as a whole cannot be read (missing file, wrong top-level type); single bad entries are rejects."""


@dataclass
class ImportResult:
    """Manifest rows (JSON-ready dicts, in input order) and the rejected entries."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def summary(self) -> str:
        return f"converted {len(self.rows)}, rejected {len(self.rejects)}"


class _BadEntry(ValueError):
    """One input entry cannot be mapped; the message is the reject reason."""


def _manifest_path(raw: str, input_dir: Path, manifest_dir: Path) -> tuple[str, Path]:
    """-> (path as written into the manifest, absolute path on disk) following the module's path convention."""
    if Path(raw).is_absolute():
        return raw, Path(raw)
    absolute = Path(os.path.abspath(input_dir / raw))
    try:
        rel = os.path.relpath(absolute, os.path.abspath(manifest_dir))
    except ValueError:  # different drives on Windows: no relative path exists
        return str(absolute), absolute
    return Path(rel).as_posix(), absolute


def _write_jsonl(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    # Rename so an interrupted import never leaves a half-written manifest behind.
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------- ChatML


@dataclass(frozen=True)
class _Message:
    role: str
    texts: tuple[str, ...]
    audios: tuple[tuple[str, str], ...]  # (key it came from, value)

    @property
    def text(self) -> str:
        return " ".join(t.strip() for t in self.texts if t.strip())


def _parse_part(part: Any, where: str) -> tuple[str | None, tuple[str, str] | None]:
    """A content part -> (text, None) or (None, (key, audio path))."""
    if not isinstance(part, dict):
        raise _BadEntry(f"{where}: content part is {type(part).__name__}, expected an object")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _BadEntry(f"{where}: text part without a string 'text'")
        return text, None
    if kind == "audio":
        for key in AUDIO_KEYS:
            value = part.get(key)
            if isinstance(value, str) and value.strip():
                return None, (key, value.strip())
        raise _BadEntry(f"{where}: audio part without a path ({'/'.join(AUDIO_KEYS)})")
    raise _BadEntry(f"{where}: unknown content part type {kind!r}")


def _parse_messages(messages: Any) -> list[_Message]:
    if not isinstance(messages, list) or not messages:
        raise _BadEntry("'messages' is missing, empty or not a list")
    parsed = []
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, dict):
            raise _BadEntry(f"{where} is not an object")
        role = msg.get("role")
        if role not in ROLES:
            raise _BadEntry(f"{where}: unknown role {role!r}")
        content = msg.get("content")
        # Higgs' ChatML also allows a single part object instead of a list.
        if isinstance(content, dict):
            content = [content]
        if isinstance(content, str):
            parsed.append(_Message(role, (content,), ()))
            continue
        if not isinstance(content, list):
            raise _BadEntry(f"{where}: content is {type(content).__name__}, expected a string or a list of parts")
        texts, audios = [], []
        for part in content:
            text, audio = _parse_part(part, where)
            if text is not None:
                texts.append(text)
            if audio is not None:
                audios.append(audio)
        parsed.append(_Message(role, tuple(texts), tuple(audios)))
    return parsed


def _scene(system: _Message | None) -> str | None:
    if system is None:
        return None
    text = "\n".join(system.texts).strip()
    if text.startswith(SYSTEM_PREFIX):
        text = text[len(SYSTEM_PREFIX) :]
    for marker in SCENE_MARKERS:
        text = text.replace(marker, "")
    return text.strip() or None


def _user_text_before(messages: list[_Message], index: int, stop: int) -> str | None:
    """Text of the nearest user message in messages[stop:index] that has text (scanning backwards)."""
    for msg in reversed(messages[stop:index]):
        if msg.role == "user" and msg.text:
            return msg.text
    return None


def _chatml_id(obj: Any, index: int) -> tuple[str, bool]:
    """-> (row id, whether the top-level `id` was used): misc.id, else id, else chatml_<index>."""
    if not isinstance(obj, dict):
        return f"chatml_{index}", False
    misc = obj.get("misc")
    if isinstance(misc, dict) and misc.get("id") not in (None, ""):
        return str(misc["id"]), False
    if obj.get("id") not in (None, ""):
        return str(obj["id"]), True
    return f"chatml_{index}", False


def _chatml_row(
    obj: Any, row_id: str, id_from_top: bool, input_dir: Path, manifest_dir: Path, check_audio: bool
) -> dict[str, Any]:
    """One ChatML object -> manifest row; raises _BadEntry with the reason."""
    if not isinstance(obj, dict):
        raise _BadEntry(f"entry is {type(obj).__name__}, expected an object")
    messages = _parse_messages(obj.get("messages"))
    audios = [(i, a) for i, m in enumerate(messages) if m.role == "assistant" for a in m.audios]
    if not audios:
        raise _BadEntry("no assistant audio")
    if len(audios) == 1:
        raise _BadEntry("only one assistant audio: no reference to clone the voice from")
    (ref_msg, ref_audio), (tgt_msg, tgt_audio) = audios[0], audios[-1]
    ref_text = _user_text_before(messages, ref_msg, 0)
    if ref_text is None:
        raise _BadEntry("no user text before the reference audio")
    # Stop at the previous assistant audio so the target never borrows the reference's transcript.
    prev_audio_msg = max(i for i, _ in audios[:-1])
    tgt_text = _user_text_before(messages, tgt_msg, prev_audio_msg + 1) if prev_audio_msg < tgt_msg else None
    if tgt_text is None:
        raise _BadEntry("no user text between the previous assistant audio and the target audio")

    paths = {}
    for name, (key, raw) in (("reference", ref_audio), ("target", tgt_audio)):
        if key == "raw_audio" and len(raw) > MAX_PATH_CHARS:
            raise _BadEntry(f"{name} audio is inline raw_audio data (base64), not a path; extract it to a file first")
        if raw.startswith("file://"):
            raw = raw[len("file://") :]
        elif "://" in raw:
            raise _BadEntry(f"{name} audio is a remote URL ({raw}); download it first")
        written, absolute = _manifest_path(raw, input_dir, manifest_dir)
        if check_audio and not absolute.is_file():
            raise _BadEntry(f"{name} audio not found: {absolute}")
        paths[name] = written

    speaker = obj.get("speaker")
    if isinstance(speaker, (int, float)) and not isinstance(speaker, bool):
        speaker = str(speaker)
    if speaker is not None and not isinstance(speaker, str):
        raise _BadEntry(f"speaker is {type(speaker).__name__}, expected a string")

    row: dict[str, Any] = {
        "id": row_id,
        "ref_audio": paths["reference"],
        "ref_text": ref_text,
        "audio": paths["target"],
        "text": tgt_text,
    }
    if speaker:
        row["speaker"] = speaker
    scene = _scene(next((m for m in messages if m.role == "system"), None))
    if scene:
        row["scene"] = scene
    # Copied verbatim (null included) so nothing the source recorded is lost.
    for key in ("start_index", "misc"):
        if key in obj:
            row[key] = obj[key]
    consumed = set(CHATML_KNOWN_KEYS) | ({"id"} if id_from_top else set())
    extra = {k: v for k, v in obj.items() if k not in consumed}
    if extra:
        row["extra"] = extra
    return row


def convert_chatml(input_path: str | Path, manifest_dir: str | Path, check_audio: bool = True) -> ImportResult:
    """Map a Higgs ChatML JSON list to manifest rows; `Reject.line` holds the 0-based object index.

    Per object: reference = first assistant audio + the user text before it; target = last assistant audio + the user
    text before it; scene = the system message minus the standard prefix and scene markers. Assistant audios between
    the first and the last (multi-turn samples) are not represented in the row.
    """
    input_path = Path(input_path)
    if not input_path.is_file():
        raise InputError(f"{input_path}: file not found")
    try:
        data = json.loads(input_path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{input_path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise InputError(f"{input_path}: expected a JSON list of ChatML objects, got {type(data).__name__}")
    result = ImportResult()
    seen: set[str] = set()
    source = str(input_path)
    for index, obj in enumerate(data):
        row_id, id_from_top = _chatml_id(obj, index)
        try:
            row = _chatml_row(obj, row_id, id_from_top, input_path.parent, Path(manifest_dir), check_audio)
        except _BadEntry as err:
            result.rejects.append(Reject(source, index, row_id, str(err)))
            continue
        if row_id in seen:
            result.rejects.append(Reject(source, index, row_id, "duplicate id"))
            continue
        seen.add(row_id)
        result.rows.append(row)
    return result


# ---------------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class _Utterance:
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
        raise InputError(f"{corpus}: folder has no {' or '.join(METADATA_NAMES)}")
    if not corpus.is_file():
        raise InputError(f"{corpus}: file not found")
    return corpus


def _utterance_id(absolute: Path, corpus_dir: Path) -> str:
    """The audio path relative to the corpus folder, without suffix: unique and readable (e.g. wavs/LJ001-0001)."""
    try:
        rel = Path(os.path.relpath(absolute, os.path.abspath(corpus_dir)))
    except ValueError:  # different drives on Windows
        rel = Path("..")
    stem = rel.with_suffix("") if rel.parts[:1] != ("..",) else absolute.with_suffix("")
    return stem.as_posix()


def _read_corpus(meta: Path, manifest_dir: Path) -> tuple[list[_Utterance], list[Reject]]:
    utterances: list[_Utterance] = []
    rejects: list[Reject] = []
    source = str(meta)
    seen_audio: dict[Path, int] = {}
    seen_ids: set[str] = set()
    with meta.open(encoding="utf-8-sig", newline="") as handle:
        # Every line becomes an utterance or a reject, blank ones included, so callers can reconcile counts.
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
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
            written, absolute = _manifest_path(audio_raw, meta.parent, manifest_dir)
            utt_id = _utterance_id(absolute, meta.parent)
            if absolute in seen_audio:
                rejects.append(
                    Reject(source, line_no, utt_id, f"duplicate audio (first on line {seen_audio[absolute]})")
                )
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
            utterances.append(_Utterance(line_no, utt_id, written, text, speaker, info.frames / info.samplerate))
    return utterances, rejects


def pair_corpus(
    corpus: str | Path,
    manifest_dir: str | Path,
    seed: int = 0,
    min_ref_seconds: float = 3.0,
    max_ref_seconds: float = 15.0,
) -> ImportResult:
    """Give every utterance a reference: another utterance of its speaker lasting [min, max] seconds.

    The choice depends only on the seed, the utterance's id and its speaker's eligible ids (sorted), so the pairing is
    reproducible and does not change with line or file-system order. Rows and rejects together cover every line.
    """
    if min_ref_seconds < 0 or max_ref_seconds < min_ref_seconds:
        raise ValueError(f"need 0 <= min_ref_seconds <= max_ref_seconds, got {min_ref_seconds}, {max_ref_seconds}")
    meta = _metadata_file(Path(corpus))
    utterances, rejects = _read_corpus(meta, Path(manifest_dir))
    eligible: dict[str, list[_Utterance]] = {}
    for utt in utterances:
        if min_ref_seconds <= utt.seconds <= max_ref_seconds:
            eligible.setdefault(utt.speaker, []).append(utt)
    position: dict[str, int] = {}
    for refs in eligible.values():
        refs.sort(key=lambda u: u.id)
        position.update((u.id, i) for i, u in enumerate(refs))

    rows_by_line: dict[int, dict[str, Any]] = {}
    for utt in utterances:
        refs = eligible.get(utt.speaker, [])
        own = position.get(utt.id)  # ids are unique, so a hit is this utterance's slot in its speaker's list
        choices = len(refs) - (own is not None)
        if choices == 0:
            reason = f"speaker {utt.speaker!r} has no other utterance lasting {min_ref_seconds:g}-{max_ref_seconds:g} s"
            rejects.append(Reject(str(meta), utt.line, utt.id, reason))
            continue
        # Seeding with a string is stable across processes (unlike hash()), and per-utterance RNGs keep each choice
        # independent of how many other utterances came before it.
        pick = random.Random(f"{seed}\x00{utt.speaker}\x00{utt.id}").randrange(choices)
        if own is not None and pick >= own:
            pick += 1  # skip the utterance itself without building a filtered list (O(1) per utterance)
        ref = refs[pick]
        rows_by_line[utt.line] = {
            "id": utt.id,
            "ref_audio": ref.audio,
            "ref_text": ref.text,
            "audio": utt.audio,
            "text": utt.text,
            "speaker": utt.speaker,
            "ref_id": ref.id,
        }
    rejects.sort(key=lambda r: r.line)
    return ImportResult([rows_by_line[k] for k in sorted(rows_by_line)], rejects)


# ---------------------------------------------------------------------------------------------------- split


@dataclass
class SplitResult:
    train: ImportResult
    eval: ImportResult
    eval_speakers: list[str]

    def summary(self) -> str:
        no_speaker = sum(1 for r in self.train.rows if not r.get("speaker"))
        speakers = len({r["speaker"] for r in self.train.rows if r.get("speaker")})
        return (
            f"train {len(self.train.rows)} rows ({speakers} speakers, {no_speaker} rows without one), "
            f"eval {len(self.eval.rows)} rows ({len(self.eval_speakers)} held-out speakers: "
            f"{', '.join(self.eval_speakers)}), rejected {len(self.train.rejects)}"
        )


def split_by_speaker(
    manifest: str | Path,
    train_dir: str | Path,
    eval_dir: str | Path,
    eval_speakers: int = 0,
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> SplitResult:
    """Hold out whole speakers for evaluation (zero-shot: the model never trains on their voices).

    `eval_speakers` speakers, or else the fewest speakers holding at least `eval_fraction` of the rows, drawn in a
    seeded order of the sorted speaker names, go to the eval set. Rows without a speaker stay in training. Unparsable
    lines become rejects (in `train.rejects`); relative audio paths are rewritten for each output's folder.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"{manifest}: file not found")
    if (eval_speakers > 0) == (eval_fraction > 0):
        raise ValueError("give exactly one of eval_speakers > 0 or 0 < eval_fraction < 1")
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    parsed = [obj for _, obj in json_objects(manifest, encoding="utf-8-sig")]
    rows = [obj for obj in parsed if not isinstance(obj, Reject)]
    rejects = [obj for obj in parsed if isinstance(obj, Reject)]
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("speaker"):
            counts[str(row["speaker"])] = counts.get(str(row["speaker"]), 0) + 1
    order = sorted(counts)
    random.Random(f"split\x00{seed}").shuffle(order)
    if eval_speakers:
        held = order[:eval_speakers]
    else:
        held, total = [], 0
        while total < eval_fraction * len(rows) and len(held) < len(order):
            held.append(order[len(held)])
            total += counts[held[-1]]
    if not held or len(held) >= len(order):
        raise ValueError(
            f"{manifest}: {len(order)} speakers; holding out {len(held)} would leave "
            f"{'no eval set' if not held else 'no training speaker'}"
        )
    held_set = set(held)
    train, evaluation = ImportResult(rejects=rejects), ImportResult()
    for row in rows:
        part, folder = (evaluation, eval_dir) if str(row.get("speaker") or "") in held_set else (train, train_dir)
        moved = dict(row)
        for key in ("ref_audio", "audio"):
            if isinstance(moved.get(key), str):
                moved[key] = _manifest_path(moved[key], manifest.parent, Path(folder))[0]
        part.rows.append(moved)
    return SplitResult(train, evaluation, sorted(held))


# ---------------------------------------------------------------------------------------------------- writing / CLI


def write_result(
    result: ImportResult, out: str | Path, rejects_path: str | Path | None = None, position_key: str = "line"
) -> None:
    """Write the manifest and, if asked, the rejects (JSONL: source, <position_key>, id, reason)."""
    _write_jsonl(Path(out), [json.dumps(row, ensure_ascii=False) for row in result.rows])
    if rejects_path is not None:
        lines = [
            json.dumps({"source": r.source, position_key: r.line, "id": r.id, "reason": r.reason}, ensure_ascii=False)
            for r in result.rejects
        ]
        _write_jsonl(Path(rejects_path), lines)


def import_chatml(
    input_path: str | Path, out: str | Path, rejects_path: str | Path | None = None, check_audio: bool = True
) -> ImportResult:
    """Convert a ChatML JSON list and write the manifest (+ rejects with an `index` key)."""
    result = convert_chatml(input_path, Path(out).parent, check_audio=check_audio)
    write_result(result, out, rejects_path, position_key="index")
    return result


def import_pairs(
    corpus: str | Path,
    out: str | Path,
    rejects_path: str | Path | None = None,
    seed: int = 0,
    min_ref_seconds: float = 3.0,
    max_ref_seconds: float = 15.0,
) -> ImportResult:
    """Pair an `audio|text|speaker` corpus and write the manifest (+ rejects with a 1-based `line` key)."""
    result = pair_corpus(corpus, Path(out).parent, seed, min_ref_seconds, max_ref_seconds)
    write_result(result, out, rejects_path, position_key="line")
    return result


def _report(
    result: ImportResult, rejects_path: str | None, position_key: str, summary: str | None = None, shown: int = 20
) -> None:
    print(summary or result.summary())
    if result.rejects and rejects_path is None:
        # Without a rejects file the reasons would be lost, so show the first few.
        for r in result.rejects[:shown]:
            print(f"rejected {position_key} {r.line} (id {r.id}): {r.reason}", file=sys.stderr)
        if len(result.rejects) > shown:
            print(f"... {len(result.rejects) - shown} more; pass --rejects FILE to keep them all", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.importers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_chat = sub.add_parser("chatml", help="convert a Higgs Audio ChatML JSON list")
    p_chat.add_argument("input", help="JSON list of ChatML objects (audio paths relative to its folder)")
    p_chat.add_argument(
        "--no-check-audio", action="store_true", help="do not reject objects whose audio files are missing"
    )
    p_pairs = sub.add_parser("pairs", help="pair utterances of an audio|text|speaker corpus")
    p_pairs.add_argument("corpus", help="metadata file, or a folder with metadata.csv / metadata.txt")
    p_pairs.add_argument("--seed", type=int, default=0, help="pairing seed (same seed, same pairing)")
    p_pairs.add_argument("--min-ref-seconds", type=float, default=3.0, help="shortest usable reference")
    p_pairs.add_argument("--max-ref-seconds", type=float, default=15.0, help="longest usable reference")
    p_split = sub.add_parser("split", help="hold out whole speakers of a manifest as an eval manifest")
    p_split.add_argument("manifest", help="manifest JSONL to split (rows need a speaker to be held out)")
    group = p_split.add_mutually_exclusive_group(required=True)
    group.add_argument("--eval-speakers", type=int, default=0, help="number of speakers to hold out")
    group.add_argument("--eval-fraction", type=float, default=0.0, help="hold out speakers for ~this share of rows")
    p_split.add_argument("--seed", type=int, default=0, help="which speakers (same seed, same split)")
    p_split.add_argument("--eval-out", required=True, help="eval manifest JSONL to write")
    for p in (p_chat, p_pairs, p_split):
        p.add_argument("--out", required=True, help="(training) manifest JSONL to write")
        p.add_argument("--rejects", default=None, help="JSONL file for the entries that could not be converted")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            split = split_by_speaker(args.manifest, Path(args.out).parent, Path(args.eval_out).parent,
                                     args.eval_speakers, args.eval_fraction, args.seed)  # fmt: skip
            write_result(split.train, args.out, args.rejects)
            write_result(split.eval, args.eval_out)
            _report(split.train, args.rejects, "line", split.summary())
        elif args.command == "chatml":
            result = import_chatml(args.input, args.out, args.rejects, check_audio=not args.no_check_audio)
            _report(result, args.rejects, "index")
        else:
            result = import_pairs(
                args.corpus, args.out, args.rejects, args.seed, args.min_ref_seconds, args.max_ref_seconds
            )
            _report(result, args.rejects, "line")
    except (InputError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
