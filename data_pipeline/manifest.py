"""JSONL voice-cloning manifests: one row per line with id, ref_audio, ref_text, audio, text (+ speaker, language,
scene). Relative paths are relative to the manifest's folder. Bad rows become `Reject`s naming the line and reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("id", "ref_audio", "ref_text", "audio", "text")


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


def json_objects(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(1-based line, parsed object) for each non-blank line of a JSONL file, or (line, Reject) when the line is not
    a JSON object."""
    with path.open(encoding=encoding) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                yield line_no, Reject(str(path), line_no, None, f"invalid JSON: {err.msg}")
                continue
            if not isinstance(obj, dict):
                yield line_no, Reject(str(path), line_no, None, "line is not a JSON object")
                continue
            yield line_no, obj


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
        row_id = obj.get("id")
        missing = [k for k in REQUIRED_FIELDS if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            rejects.append(Reject(str(path), line_no, row_id, f"missing or empty fields: {', '.join(missing)}"))
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
