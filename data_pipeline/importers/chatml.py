"""ChatML importer: the JSON list of ChatML objects used by Higgs Audio fine-tuning scripts -> manifest rows.

Per object: reference = first assistant audio + the user text before it; target = last assistant audio + the user text
before it; scene = the system message minus the standard system prompt and scene markers. `Reject.line` holds the
0-based object index. A file that is not UTF-8 or not JSON is one `InputError` naming the byte offset (or line and
column); a bad object is a reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.errors import InputError
from data_pipeline.importers.common import (
    BadEntry,
    ImportResult,
    check_row,
    manifest_path,
    require_file,
    write_result,
)
from data_pipeline.ingest.manifest import Reject, decode_utf8, describe_decode_error, parse_json, type_name
from data_pipeline.layout.builder import SYSTEM_PROMPT
from data_pipeline.layout.text_tokens import SCENE_END, SCENE_START
from data_pipeline.progress import Progress

ROLES = ("system", "user", "assistant")
# Keys a ChatML audio part may carry its path under, in order of preference.
AUDIO_KEYS = ("audio_url", "url", "raw_audio")
# ChatML top-level keys that map onto manifest fields; everything else is kept under "extra".
CHATML_KNOWN_KEYS = ("messages", "start_index", "speaker", "misc")
# Longer than any sane path: such a `raw_audio` is inline (base64) audio, which we do not decode.
MAX_PATH_CHARS = 1024


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of byte `offset` (columns count bytes)."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def read_chatml_document(path: Path) -> Any:
    """The parsed JSON of a ChatML file (a UTF-8 BOM is accepted); InputError says where it is not UTF-8 or JSON."""
    data = require_file(path).read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = decode_utf8(data, strip_bom=True)
    except UnicodeDecodeError as err:
        offset = err.start + bom
        line, col = _line_col(data, offset)
        where = f"byte offset {offset} (line {line}, column {col})"
        raise InputError(f"{path}: {describe_decode_error(err, where)}") from None
    try:
        return parse_json(text)
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


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
        raise BadEntry(f"{where}: content part is {type(part).__name__}, expected an object")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise BadEntry(f"{where}: text part without a string 'text'")
        return text, None
    if kind == "audio":
        for key in AUDIO_KEYS:
            value = part.get(key)
            if isinstance(value, str) and value.strip():
                return None, (key, value.strip())
        raise BadEntry(f"{where}: audio part without a path ({'/'.join(AUDIO_KEYS)})")
    raise BadEntry(f"{where}: unknown content part type {kind!r}")


def _parse_messages(messages: Any) -> list[_Message]:
    if not isinstance(messages, list) or not messages:
        raise BadEntry("'messages' is missing, empty or not a list")
    parsed = []
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, dict):
            raise BadEntry(f"{where} is not an object")
        role = msg.get("role")
        if role not in ROLES:
            raise BadEntry(f"{where}: unknown role {role!r}")
        content = msg.get("content")
        # Higgs' ChatML also allows a single part object instead of a list.
        if isinstance(content, dict):
            content = [content]
        if isinstance(content, str):
            parsed.append(_Message(role, (content,), ()))
            continue
        if not isinstance(content, list):
            raise BadEntry(f"{where}: content is {type(content).__name__}, expected a string or a list of parts")
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
    if text.startswith(SYSTEM_PROMPT):
        text = text[len(SYSTEM_PROMPT) :]
    for marker in (SCENE_START, SCENE_END):
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
    """One ChatML object -> manifest row; raises BadEntry with the reason."""
    if not isinstance(obj, dict):
        raise BadEntry(f"entry is {type(obj).__name__}, expected an object")
    messages = _parse_messages(obj.get("messages"))
    audios = [(i, a) for i, m in enumerate(messages) if m.role == "assistant" for a in m.audios]
    if not audios:
        raise BadEntry("no assistant audio")
    if len(audios) == 1:
        raise BadEntry("only one assistant audio: no reference to clone the voice from")
    (ref_msg, ref_audio), (tgt_msg, tgt_audio) = audios[0], audios[-1]
    ref_text = _user_text_before(messages, ref_msg, 0)
    if ref_text is None:
        raise BadEntry("no user text before the reference audio")
    # Stop at the previous assistant audio so the target never borrows the reference's transcript.
    prev_audio_msg = max(i for i, _ in audios[:-1])
    tgt_text = _user_text_before(messages, tgt_msg, prev_audio_msg + 1) if prev_audio_msg < tgt_msg else None
    if tgt_text is None:
        raise BadEntry("no user text between the previous assistant audio and the target audio")

    paths = {}
    for name, (key, raw) in (("reference", ref_audio), ("target", tgt_audio)):
        if key == "raw_audio" and len(raw) > MAX_PATH_CHARS:
            raise BadEntry(f"{name} audio is inline raw_audio data (base64), not a path; extract it to a file first")
        if raw.startswith("file://"):
            raw = raw[len("file://") :]
        elif "://" in raw:
            raise BadEntry(f"{name} audio is a remote URL ({raw}); download it first")
        written, absolute = manifest_path(raw, input_dir, manifest_dir)
        try:
            found = not check_audio or absolute.is_file()
        except OSError as err:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
            raise BadEntry(f"{name} audio cannot be accessed: {absolute} ({err.strerror or err})") from None
        if not found:
            raise BadEntry(f"{name} audio not found: {absolute}")
        paths[name] = written

    speaker = obj.get("speaker")
    if isinstance(speaker, (int, float)) and not isinstance(speaker, bool):
        speaker = str(speaker)
    if speaker is not None and not isinstance(speaker, str):
        raise BadEntry(f"speaker is {type(speaker).__name__}, expected a string")

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


def convert_chatml(
    input_path: str | Path, manifest_dir: str | Path, check_audio: bool = True, show_progress: bool = True
) -> ImportResult:
    """Map a Higgs ChatML JSON list to manifest rows; `Reject.line` holds the 0-based object index.

    Per object: reference = first assistant audio + the user text before it; target = last assistant audio + the user
    text before it; scene = the system message minus the standard prefix and scene markers. Assistant audios between
    the first and the last (multi-turn samples) are not represented in the row.
    """
    input_path = Path(input_path)
    data = read_chatml_document(input_path)
    if not isinstance(data, list):
        raise InputError(f"{input_path}: expected a JSON list of ChatML objects, got {type_name(data)}")
    result = ImportResult()
    seen: set[str] = set()
    source = str(input_path)
    with Progress(len(data), "chatml import", "entries", show_progress) as bar:  # each entry's audio is read
        for index, obj in enumerate(data):
            bar.update()
            row_id, id_from_top = _chatml_id(obj, index)
            try:
                row = _chatml_row(obj, row_id, id_from_top, input_path.parent, Path(manifest_dir), check_audio)
                row = check_row(row)
            except BadEntry as err:
                result.rejects.append(Reject(source, index, row_id, str(err)))
                continue
            if row_id in seen:
                result.rejects.append(Reject(source, index, row_id, "duplicate id"))
                continue
            seen.add(row_id)
            result.rows.append(row)
    return result


def import_chatml(
    input_path: str | Path,
    out: str | Path,
    rejects_path: str | Path | None = None,
    check_audio: bool = True,
    show_progress: bool = True,
) -> ImportResult:
    """Convert a ChatML JSON list and write the manifest (+ rejects with an `index` key)."""
    result = convert_chatml(input_path, Path(out).parent, check_audio=check_audio, show_progress=show_progress)
    write_result(result, out, rejects_path, position_key="index")
    return result
