"""Command line of the importers: other data layouts -> our JSONL voice-cloning manifest
(`data_pipeline.ingest.manifest`).

python -m data_pipeline.importers chatml INPUT.json --out manifest.jsonl [--rejects rejects.jsonl] [--no-check-audio]
python -m data_pipeline.importers pairs CORPUS --out manifest.jsonl [--seed 0] [--min-ref-seconds 3]
                                  [--max-ref-seconds 15] [--rejects rejects.jsonl]
python -m data_pipeline.importers split manifest.jsonl --eval-speakers N | --eval-fraction F [--seed 0]
                                  --out train.jsonl --eval-out eval.jsonl [--rejects rejects.jsonl]
python -m data_pipeline.importers hf DATASET_OR_PARQUET [...] --out manifest.jsonl [--audio-dir DIR] [--split train]
                                  [--audio-column audio] [--text-column text] [--speaker-column speaker]
                                  [--id-column COL] [--seed 0] [--min-ref-seconds 3] [--max-ref-seconds 15]
                                  [--allow-absolute-paths] [--rejects rejects.jsonl]
python -m data_pipeline.importers webdataset SHARDS [...] --out manifest.jsonl [--audio-dir DIR] [--text-field text]
                                  [--speaker-field speaker] [--seed 0] [--min-ref-seconds 3] [--max-ref-seconds 15]
                                  [--rejects rejects.jsonl]

`chatml` reads the ChatML JSON list used by Higgs Audio fine-tuning scripts; `pairs` reads an `audio|text|speaker`
metadata file (or a folder holding `metadata.csv` / `metadata.txt`) and pairs every utterance with another utterance of
the same speaker as its voice reference; `split` holds out whole speakers of a manifest as an eval manifest
(`data.eval_manifest`), so the evaluation measures cloning of voices the model never trained on. `hf` reads a Hugging
Face `datasets` folder (`save_to_disk`; a DatasetDict's `--split`) or Parquet files (LibriTTS-R style) with an audio
column; `webdataset` reads tar shards (Emilia style: `KEY.mp3` + `KEY.json`). Both stream the corpus, write each
record's audio to `--audio-dir` (default `<out stem>_audio` next to the manifest; files already there with the same
size are kept, so a rerun resumes) and pair utterances like `pairs`; `--speaker-column ''` / `--speaker-field ''`
makes the corpus one speaker. An `hf` audio cell without bytes names a file relative to its table's folder; a path
that leaves the folder is a reject, and so is an absolute one unless `--allow-absolute-paths` is given.

Path convention: an audio path given as absolute in the input stays absolute; a relative one (resolved against the
input file's folder) is written relative to the output manifest's folder, so a corpus and its manifest can be moved
together. Inputs that cannot be converted become rejects with their position and reason; one bad entry (or one line
that is not UTF-8) never stops the import. An input that cannot be read at all is one `error:` line and exit code 4
(missing file) or 5 (bad input); --traceback shows the trace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.errors import DATA_ERRORS, run_cli
from data_pipeline.importers.chatml import import_chatml
from data_pipeline.importers.common import ImportResult, write_result
from data_pipeline.importers.hf import import_hf
from data_pipeline.importers.pairs import import_pairs
from data_pipeline.importers.split import split_by_speaker
from data_pipeline.importers.wds import import_webdataset


def _report(
    result: ImportResult, rejects_path: str | None, position_key: str, summary: str | None = None, shown: int = 20
) -> None:
    print(summary or result.summary())
    if result.rejects and rejects_path is None:
        # Without a rejects file the reasons would be lost, so show the first few.
        for r in result.rejects[:shown]:
            # Corpus importers read many files: name the one the entry came from.
            where = f"{r.source} {position_key}" if position_key in ("row", "sample") else position_key
            print(f"rejected {where} {r.line} (id {r.id}): {r.reason}", file=sys.stderr)
        if len(result.rejects) > shown:
            print(f"... {len(result.rejects) - shown} more; pass --rejects FILE to keep them all", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one importer command; an expected error is one `error:` line and its exit code (see data_pipeline.errors)."""
    return run_cli(_main, argv, DATA_ERRORS)


def _main(argv: list[str]) -> int:
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
    p_split = sub.add_parser("split", help="hold out whole speakers of a manifest as an eval manifest")
    p_split.add_argument("manifest", help="manifest JSONL to split (rows need a speaker to be held out)")
    group = p_split.add_mutually_exclusive_group(required=True)
    group.add_argument("--eval-speakers", type=int, default=0, help="number of speakers to hold out")
    group.add_argument("--eval-fraction", type=float, default=0.0, help="hold out speakers for ~this share of rows")
    p_split.add_argument("--seed", type=int, default=0, help="which speakers (same seed, same split)")
    p_split.add_argument("--eval-out", required=True, help="eval manifest JSONL to write")
    p_hf = sub.add_parser("hf", help="extract and pair a Hugging Face datasets folder or Parquet files")
    p_hf.add_argument("inputs", nargs="+", help="save_to_disk folder(s), Parquet file(s) or folder(s) of them")
    p_hf.add_argument("--split", default="train", help="split of a DatasetDict folder or of Hub-named Parquet shards")
    p_hf.add_argument("--audio-column", default="audio", help="column holding the Audio feature (bytes/path/array)")
    p_hf.add_argument("--text-column", default="text", help="column holding the transcript")
    p_hf.add_argument("--speaker-column", default="speaker", help="speaker column ('' = one speaker)")
    p_hf.add_argument("--id-column", default="", help="column of row ids (default: <table>_<row>)")
    p_hf.add_argument("--allow-absolute-paths", action="store_true",
                      help="read audio cells whose path is absolute (default: reject them; relative paths must stay "
                      "inside the table's folder)")  # fmt: skip
    p_wds = sub.add_parser("webdataset", help="extract and pair WebDataset tar shards (audio + .json per key)")
    p_wds.add_argument("inputs", nargs="+", help="tar file(s), folder(s) of them or brace patterns (quoted)")
    p_wds.add_argument("--text-field", default="text", help="field of the .json holding the transcript")
    p_wds.add_argument("--speaker-field", default="speaker", help="field of the .json holding the speaker ('' = one)")
    for p in (p_pairs, p_hf, p_wds):
        p.add_argument("--seed", type=int, default=0, help="pairing seed (same seed, same pairing)")
        p.add_argument("--min-ref-seconds", type=float, default=3.0, help="shortest usable reference")
        p.add_argument("--max-ref-seconds", type=float, default=15.0, help="longest usable reference")
    for p in (p_hf, p_wds):
        p.add_argument("--audio-dir", default=None, help="folder for the audio files (default: <out stem>_audio)")
    for p in (p_chat, p_pairs, p_split, p_hf, p_wds):
        p.add_argument("--out", required=True, help="(training) manifest JSONL to write")
        p.add_argument("--rejects", default=None, help="JSONL file for the entries that could not be converted")
        p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    if args.command == "split":
        split = split_by_speaker(args.manifest, Path(args.out).parent, Path(args.eval_out).parent,
                                 args.eval_speakers, args.eval_fraction, args.seed)  # fmt: skip
        write_result(split.train, args.out, args.rejects)
        write_result(split.eval, args.eval_out)
        _report(split.train, args.rejects, "line", split.summary())
    elif args.command in ("hf", "webdataset"):
        common = dict(rejects_path=args.rejects, audio_dir=args.audio_dir, seed=args.seed,
                      min_ref_seconds=args.min_ref_seconds, max_ref_seconds=args.max_ref_seconds)  # fmt: skip
        if args.command == "hf":
            result = import_hf(args.inputs, args.out, split=args.split, audio_column=args.audio_column,
                               text_column=args.text_column, speaker_column=args.speaker_column,
                               id_column=args.id_column, allow_absolute_paths=args.allow_absolute_paths,
                               **common)  # fmt: skip
        else:
            result = import_webdataset(args.inputs, args.out, text_field=args.text_field,
                                       speaker_field=args.speaker_field, **common)  # fmt: skip
        _report(result, args.rejects, "row" if args.command == "hf" else "sample")
    elif args.command == "chatml":
        result = import_chatml(args.input, args.out, args.rejects, check_audio=not args.no_check_audio)
        _report(result, args.rejects, "index")
    else:
        result = import_pairs(args.corpus, args.out, args.rejects, args.seed, args.min_ref_seconds,
                              args.max_ref_seconds)  # fmt: skip
        _report(result, args.rejects, "line")
    return 0
