"""JSONL voice-cloning manifests: one row per line with id, ref_audio, ref_text, audio, text (+ speaker, language,
scene). Relative paths are relative to the manifest's folder. Bad rows become `Reject`s naming the line and reason.

Files are read as bytes, one line at a time, so no input can stop a read: a line that is not UTF-8, not JSON, too long
(`MAX_LINE_BYTES`) or of the wrong shape is rejected with its line number; the other lines are used. A UTF-8 byte
order mark on line 1 and CRLF line ends are accepted. `text_lines` and `json_objects` are the one line reader of the
project: the importers read their inputs through them too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

REQUIRED_FIELDS = ("id", "ref_audio", "ref_text", "audio", "text")
OPTIONAL_FIELDS = ("speaker", "language", "scene")
UTF8_BOM = b"\xef\xbb\xbf"
# A manifest row is a few hundred bytes; a line past 1 MiB is a broken file (binary data, a missing newline), and
# reading it whole could exhaust memory. It is rejected and skipped in bounded chunks.
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class ManifestRow:
    line: int
    id: str
    ref_audio: Path
    ref_text: str
    audio: Path
    text: str
    speaker: str | None = None
    language: str | None = None
    scene: str | None = None


@dataclass(frozen=True)
class Reject:
    source: str
    line: int
    id: str | None
    reason: str

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "line": self.line, "id": self.id, "reason": self.reason})


def type_name(value: Any) -> str:
    """JSON-ish name of a parsed value's type, for "must be a string, got int" messages."""
    return "null" if value is None else type(value).__name__


def decode_utf8(raw: bytes, strip_bom: bool) -> str:
    """Strict UTF-8 decode (a leading BOM dropped when `strip_bom`); raises UnicodeDecodeError."""
    if strip_bom and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    return raw.decode("utf-8")


def describe_decode_error(err: UnicodeDecodeError, where: str | None = None) -> str:
    """'byte 0xe9 at column 12 is not UTF-8 (invalid continuation byte); ...': what, where (default: the column in
    the decoded bytes) and the fix."""
    bad = err.object[err.start : err.start + 1].hex()
    where = where or f"column {err.start + 1}"
    return f"byte 0x{bad} at {where} is not UTF-8 ({err.reason}); re-save the file as UTF-8"


def _raw_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Each line as bytes (newline kept), or None for a line longer than `limit` bytes (skipped in bounded reads)."""
    while raw := handle.readline(limit + 1):
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):  # drain the rest of the over-long line without holding it
            raw = handle.readline(limit + 1)
        yield None


def text_lines(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | Reject]]:
    """(1-based line, text without its line end) for every line of a text file, blank ones included, or (line,
    Reject) for a line that is not UTF-8 or is longer than `max_line_bytes`."""
    source = str(path)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(_raw_lines(handle, max_line_bytes), start=1):
            if raw is None:
                yield line_no, Reject(source, line_no, None, f"line longer than {max_line_bytes} bytes")
                continue
            try:
                text = decode_utf8(raw, strip_bom=line_no == 1)
            except UnicodeDecodeError as err:
                yield line_no, Reject(source, line_no, None, describe_decode_error(err))
                continue
            yield line_no, text.rstrip("\r\n")


def parse_json(text: str) -> Any:
    """json.loads that raises only ValueError, with a readable message, for any bad text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} (column {err.colno})") from err
    except RecursionError as err:
        raise ValueError("invalid JSON: nested too deeply") from err
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise ValueError(f"invalid JSON: {err}") from err


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(1-based line, parsed object) for each non-blank line of a JSONL file, or (line, Reject) when the line is not
    UTF-8, too long, or not a JSON object."""
    source = str(path)
    for line_no, text in text_lines(path):
        if isinstance(text, Reject):
            yield line_no, text
            continue
        if not text.strip():
            continue
        try:
            obj = parse_json(text)
        except ValueError as err:
            yield line_no, Reject(source, line_no, None, str(err))
            continue
        if not isinstance(obj, dict):
            yield line_no, Reject(source, line_no, None, f"line is a JSON {type_name(obj)}, not an object")
            continue
        yield line_no, obj


def _encodable(value: str) -> bool:
    """False for strings holding lone surrogates (JSON escapes like \\ud800), which no file or Parquet column takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def row_id_of(obj: dict[str, Any]) -> str | None:
    """The row's id if it is a writable string (for naming the row in a reject), else None."""
    value = obj.get("id")
    return value if isinstance(value, str) and _encodable(value) else None


def row_problems(obj: dict[str, Any]) -> str | None:
    """Why a parsed manifest object is not a usable row (missing, empty or mistyped fields), or None."""
    missing = [k for k in REQUIRED_FIELDS if obj.get(k) is None or (isinstance(obj[k], str) and not obj[k].strip())]
    problems = [f"missing or empty fields: {', '.join(missing)}"] if missing else []
    for key in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{key!r} must be a string, got {type_name(value)}")
        elif not _encodable(value):
            problems.append(f"{key!r} holds an unpaired surrogate escape (not valid Unicode text)")
    return "; ".join(problems) or None


def read_manifest(path: str | Path) -> tuple[list[ManifestRow], list[Reject]]:
    """Parse every line; returns the good rows and one Reject per bad line (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    rows: list[ManifestRow] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    base = path.parent
    for line_no, obj in json_objects(path):
        if isinstance(obj, Reject):
            rejects.append(obj)
            continue
        row_id = row_id_of(obj)
        problem = row_problems(obj)
        if problem:
            rejects.append(Reject(str(path), line_no, row_id, problem))
            continue
        if row_id in seen:
            rejects.append(Reject(str(path), line_no, row_id, "duplicate id"))
            continue
        seen.add(row_id)
        rows.append(
            ManifestRow(
                line=line_no,
                id=row_id,
                ref_audio=base / obj["ref_audio"],
                ref_text=obj["ref_text"].strip(),
                audio=base / obj["audio"],
                text=obj["text"].strip(),
                speaker=obj.get("speaker"),
                language=obj.get("language"),
                scene=obj.get("scene"),
            )
        )
    return rows, rejects
