"""Split importer: hold out whole speakers of a manifest as an eval manifest (`data.eval_manifest`), so the evaluation
measures cloning of voices the model never trained on. Lines are read with the manifest's own reader and checked like
a manifest row; a bad line is a reject (in `train.rejects`) with its line number and reason."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import UsageError
from data_pipeline.importers.common import ImportResult, manifest_path, require_file
from data_pipeline.ingest.manifest import Reject, json_objects, row_id_of, row_problems
from data_pipeline.progress import Progress


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
    show_progress: bool = True,
) -> SplitResult:
    """Hold out whole speakers for evaluation (zero-shot: the model never trains on their voices).

    `eval_speakers` speakers, or else the fewest speakers holding at least `eval_fraction` of the rows, drawn in a
    seeded order of the sorted speaker names, go to the eval set. Rows without a speaker stay in training. Unparsable
    lines become rejects (in `train.rejects`); relative audio paths are rewritten for each output's folder.
    """
    manifest = require_file(Path(manifest))
    if (eval_speakers > 0) == (eval_fraction > 0):
        raise UsageError("give exactly one of eval_speakers > 0 or 0 < eval_fraction < 1")
    if not 0 <= eval_fraction < 1:
        raise UsageError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    rows, rejects = [], []
    with Progress(None, "split", "lines", show_progress) as bar:
        for line_no, obj in json_objects(manifest):
            bar.update()
            if isinstance(obj, Reject):
                rejects.append(obj)
            elif problem := row_problems(obj):
                rejects.append(Reject(str(manifest), line_no, row_id_of(obj), problem))
            else:
                rows.append(obj)
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
        raise UsageError(
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
                moved[key] = manifest_path(moved[key], manifest.parent, Path(folder))[0]
        part.rows.append(moved)
    return SplitResult(train, evaluation, sorted(held))
