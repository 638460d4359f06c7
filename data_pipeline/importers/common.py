"""What every importer shares: the result type, the path convention and atomic JSONL writing.

Path convention: an audio path given as absolute in the input stays absolute; a relative one (resolved against the
input file's folder) is written relative to the output manifest's folder, so a corpus and its manifest can be moved
together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.errors import InputError
from data_pipeline.ingest.manifest import Reject, row_problems

__all__ = [
    "BadEntry",
    "ImportResult",
    "InputError",
    "check_row",
    "json_line",
    "manifest_path",
    "require_file",
    "write_jsonl",
    "write_result",
]


@dataclass
class ImportResult:
    """Manifest rows (JSON-ready dicts, in input order) and the rejected entries."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def summary(self) -> str:
        return f"converted {len(self.rows)}, rejected {len(self.rejects)}"


class BadEntry(ValueError):
    """One input entry cannot be mapped; the message is the reject reason."""


def check_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row if the manifest reader will accept it and it can be written as UTF-8; else BadEntry with the reason."""
    problem = row_problems(row)
    if problem:
        raise BadEntry(problem)
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadEntry("holds an unpaired surrogate escape (not valid Unicode text)") from None
    return row


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path


def manifest_path(raw: str, input_dir: Path, manifest_dir: Path) -> tuple[str, Path]:
    """-> (path as written into the manifest, absolute path on disk) following the path convention."""
    if Path(raw).is_absolute():
        return raw, Path(raw)
    absolute = Path(os.path.abspath(input_dir / raw))
    try:
        rel = os.path.relpath(absolute, os.path.abspath(manifest_dir))
    except ValueError:  # different drives on Windows: no relative path exists
        return str(absolute), absolute
    return Path(rel).as_posix(), absolute


def json_line(obj: Any) -> str:
    """One JSONL line, UTF-8 text as it is; a value holding text that is not valid Unicode (a lone surrogate: a tar
    member name of Latin-1 bytes, a JSON "\\udce9" escape) is written with JSON's \\u escapes instead, which keep it
    exactly (json.loads gives the same string back)."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True)
    return text


def write_jsonl(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Rename so an interrupted import never leaves a half-written manifest behind.
    tmp.replace(path)


def write_result(
    result: ImportResult, out: str | Path, rejects_path: str | Path | None = None, position_key: str = "line"
) -> None:
    """Write the manifest and, if asked, the rejects (JSONL: source, <position_key>, id, reason)."""
    write_jsonl(Path(out), [json_line(row) for row in result.rows])
    if rejects_path is not None:
        lines = [
            json_line({"source": r.source, position_key: r.line, "id": r.id, "reason": r.reason})
            for r in result.rejects
        ]
        write_jsonl(Path(rejects_path), lines)
