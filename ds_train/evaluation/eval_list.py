"""`python -m ds_train evaluate`: clone every line of a Seed-TTS-eval test list with a checkpoint and measure it.

    python -m ds_train evaluate --checkpoint runs/exp1 [--tag best] --list meta.lst --out eval_out \
        [--speaker-model DIR] [--asr-model DIR --language en] [--max-seconds 20] [--batch-size 8]

`--checkpoint` is a training checkpoint or an exported folder. Lines are generated `--batch-size` at a time (greedy: the
same audio as one at a time). The list is Seed-TTS-eval's `meta.lst`: one line per utterance,
`utt|prompt_text|prompt_wav|infer_text[|gt_wav]`, paths relative to the list. For every line the cloned speech goes to
`wavs/<utt>.wav` and its measures to `items/<utt>.json` (written last: a line with its json is done, so a re-run resumes
where it stopped). At the end, `results.csv` (one row per utterance) and `summary.json` / `summary.md`: stop rate,
duration ratio, silence share, real-time factor, with `--speaker-model` speaker similarity to the prompt and with
`--asr-model` (a local Whisper) the word error rate (character error rate for CJK text) with Seed-TTS-eval's
normalisation; with `gt_wav`, the same for the ground truth as the reference row. Lines that cannot be used (wrong field
count, missing wav, empty text) are reported by line number in `rejects.jsonl` and skipped. Under a launcher (`deepspeed
--module ds_train evaluate ...`) each rank clones every world-size-th line; rank 0 writes the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
import torch
import torch.distributed as dist
from tqdm import tqdm

from data_pipeline.errors import InputError, UsageError
from data_pipeline.ingest.audio import load_mono
from data_pipeline.ingest.manifest import Reject, text_lines
from ds_train.components.distributed import device_for, init_distributed
from ds_train.evaluation.generation_eval import silence_share
from ds_train.evaluation.intelligibility import Transcriber, error_counts
from ds_train.evaluation.speaker_similarity import SpeakerEncoder
from ds_train.inference.generate import CloneRequest, VoiceCloner

log = logging.getLogger("ds_train")


@dataclass(frozen=True)
class ListItem:
    line: int
    utt: str
    prompt_text: str
    prompt_wav: Path
    text: str
    gt_wav: Path | None


@dataclass
class ItemResult:
    utt: str
    seconds: float
    stopped: bool
    silence_share: float
    rtf: float  # generation time / generated audio duration
    speaker_sim: float | None = None
    gt_seconds: float | None = None
    duration_ratio: float | None = None
    gt_silence_share: float | None = None
    gt_speaker_sim: float | None = None
    wer: float | None = None  # word (CJK: character) error rate of the ASR transcript against infer_text
    gt_wer: float | None = None
    errors: int | None = None
    gt_errors: int | None = None
    text_units: int | None = None


def read_list(path: Path) -> tuple[list[ListItem], list[Reject]]:
    """-> (usable lines, rejects naming line and reason); every non-blank line is one or the other."""
    items: list[ListItem] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for line_no, text in text_lines(path):
        if isinstance(text, Reject):
            rejects.append(text)
            continue
        if not text.strip():
            continue
        fields = [f.strip() for f in text.split("|")]
        utt = fields[0]
        reason = _problem(path, fields, seen)
        if reason:
            rejects.append(Reject(str(path), line_no, utt or None, reason))
            continue
        seen.add(utt)
        gt = path.parent / fields[4] if len(fields) == 5 and fields[4] else None
        items.append(ListItem(line_no, utt, fields[1], path.parent / fields[2], fields[3], gt))
    return items, rejects


def _problem(path: Path, fields: list[str], seen: set[str]) -> str:
    """Why a split list line cannot be used, or ""."""
    if len(fields) not in (4, 5):
        return f"expected 4 or 5 fields utt|prompt_text|prompt_wav|infer_text[|gt_wav], got {len(fields)}"
    if not fields[0] or "/" in fields[0] or fields[0] in seen:
        return f"utterance id {fields[0]!r} is empty, a path or a duplicate"
    if not fields[1] or not fields[3]:
        return "empty prompt_text or infer_text"
    if not (path.parent / fields[2]).is_file():
        return f"prompt wav {path.parent / fields[2]} not found"
    if len(fields) == 5 and fields[4] and not (path.parent / fields[4]).is_file():
        return f"gt wav {path.parent / fields[4]} not found"
    return ""


class ListEvaluator:
    def __init__(
        self, cloner: VoiceCloner, out: Path, max_seconds: float, speaker: SpeakerEncoder | None,
        asr: Transcriber | None = None,
    ) -> None:  # fmt: skip
        self.cloner, self.out, self.max_seconds, self.speaker, self.asr = cloner, out, max_seconds, speaker, asr

    def run_items(self, items: list[ListItem]) -> None:
        """Clone the lines not done yet as one batch, measure and write each. The real-time factor of each is the
        batch's generation time over the batch's generated audio."""
        todo = [item for item in items if not self._done(item).is_file()]
        if not todo:
            return
        prompts = [load_mono(item.prompt_wav) for item in todo]
        requests = [
            CloneRequest(wave, rate, item.prompt_text, item.text)
            for item, (wave, rate) in zip(todo, prompts, strict=True)
        ]
        started = time.perf_counter()
        cloned = self.cloner.clone_batch(requests, self.max_seconds)
        rate = self.cloner.codec.sample_rate
        audio_seconds = sum(wave.numel() for wave, _ in cloned) / rate
        rtf = (time.perf_counter() - started) / max(audio_seconds, 1e-6)
        for item, (prompt, prompt_rate), (wave, stopped) in zip(todo, prompts, cloned, strict=True):
            self._measure_and_write(item, prompt, prompt_rate, wave, stopped, rtf)

    def _done(self, item: ListItem) -> Path:
        return self.out / "items" / f"{item.utt}.json"

    def _measure_and_write(
        self, item: ListItem, prompt: torch.Tensor, prompt_rate: int, wave: torch.Tensor, stopped: bool, rtf: float
    ) -> None:
        rate = self.cloner.codec.sample_rate
        seconds = wave.numel() / rate
        result = ItemResult(item.utt, seconds, stopped, silence_share(wave, rate), rtf)
        voice = self.speaker.embed(prompt, prompt_rate) if self.speaker is not None else None  # embedded once
        if voice is not None and wave.numel():
            result.speaker_sim = float(self.speaker.embed(wave, rate) @ voice)
        if self.asr is not None:
            result.errors, result.text_units = error_counts(item.text, self.asr.transcribe(wave, rate))
            result.wer = result.errors / max(result.text_units, 1)
        if item.gt_wav is not None:
            gt, gt_rate = load_mono(item.gt_wav)
            result.gt_seconds = gt.numel() / gt_rate
            result.duration_ratio = seconds / max(result.gt_seconds, 1e-6)
            result.gt_silence_share = silence_share(gt, gt_rate)
            if voice is not None:
                result.gt_speaker_sim = float(self.speaker.embed(gt, gt_rate) @ voice)
            if self.asr is not None:
                result.gt_errors, _ = error_counts(item.text, self.asr.transcribe(gt, gt_rate))
                result.gt_wer = result.gt_errors / max(result.text_units, 1)
        wav = self.out / "wavs" / f"{item.utt}.wav"
        _write_atomic(wav, lambda p: sf.write(str(p), wave.numpy(), rate, format="WAV"))
        _write_atomic(self._done(item), lambda p: p.write_text(json.dumps(asdict(result))))


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _corpus_rate(counts: list[tuple[int | None, int | None]]) -> float | None:
    """Errors over all reference words of the set (Seed-TTS-eval's corpus WER); None without an ASR model."""
    present = [(e, n) for e, n in counts if e is not None and n is not None]
    return sum(e for e, _ in present) / max(1, sum(n for _, n in present)) if present else None


def summarize(results: list[ItemResult], rejects: list[Reject]) -> dict:
    generated = {
        "utterances": len(results),
        "stop_rate": _mean([float(r.stopped) for r in results]),
        "duration_ratio": _mean([r.duration_ratio for r in results]),
        "silence_share": _mean([r.silence_share for r in results]),
        "speaker_sim": _mean([r.speaker_sim for r in results]),
        "rtf": _mean([r.rtf for r in results]),
        "wer": _corpus_rate([(r.errors, r.text_units) for r in results]),
    }
    with_gt = [r for r in results if r.gt_seconds is not None]
    ground_truth = {
        "utterances": len(with_gt), "stop_rate": None, "duration_ratio": 1.0 if with_gt else None,
        "silence_share": _mean([r.gt_silence_share for r in with_gt]),
        "speaker_sim": _mean([r.gt_speaker_sim for r in with_gt]), "rtf": None,
        "wer": _corpus_rate([(r.gt_errors, r.text_units) for r in with_gt]),
    }  # fmt: skip
    return {"generated": generated, "ground_truth": ground_truth, "rejected_lines": len(rejects)}


def _markdown(summary: dict) -> str:
    keys = ["utterances", "wer", "speaker_sim", "stop_rate", "duration_ratio", "silence_share", "rtf"]
    rows = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("generated", "ground_truth"):
        cells = [("n/a" if summary[name][k] is None else f"{summary[name][k]:.4g}") for k in keys]
        rows.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + f"\n\n{summary['rejected_lines']} list lines rejected (see rejects.jsonl).\n"


def evaluate_list(
    checkpoint: str | Path, list_path: str | Path, out: str | Path, which: str = "latest", max_seconds: float = 20.0,
    speaker_model: str | None = None, asr_model: str | None = None, language: str | None = None, batch_size: int = 8,
) -> dict | None:  # fmt: skip
    """Clone and measure this rank's lines; rank 0 then writes the CSV and summary -> the summary (None elsewhere)."""
    list_path, out = Path(list_path), Path(out)
    if not list_path.is_file():
        raise InputError(f"test list {list_path} does not exist")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    rank, local, world = init_distributed() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else (0, 0, 1)
    items, rejects = read_list(list_path)
    for r in rejects:
        log.warning("%s line %d (%s): %s; skipped", list_path, r.line, r.id, r.reason)
    device = device_for(local)
    cloner = VoiceCloner(checkpoint, which, device)
    speaker = SpeakerEncoder(speaker_model, device) if speaker_model else None
    asr = Transcriber(asr_model, device, language) if asr_model else None
    evaluator = ListEvaluator(cloner, out, max_seconds, speaker, asr)
    mine = items[rank::world]
    with tqdm(total=len(mine), desc=f"evaluate rank {rank}", unit="utt", disable=rank != 0, dynamic_ncols=True) as bar:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            evaluator.run_items(batch)
            bar.update(len(batch))
    if world > 1:
        dist.barrier()
    if rank != 0:
        return None
    results = [ItemResult(**json.loads((out / "items" / f"{i.utt}.json").read_text())) for i in items]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0]) if results else ItemResult.__annotations__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    (out / "rejects.jsonl").write_text("".join(r.to_json() + "\n" for r in rejects))
    summary = summarize(results, rejects)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    return summary
