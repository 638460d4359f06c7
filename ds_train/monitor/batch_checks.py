"""Health checks on one collated micro-batch, before the model sees it (seed failures 1, 2 and 5 seen in the data).

Each row is judged on its own, so one bad sample is dropped and named instead of crashing the step or silently
teaching the model the wrong thing:
- decode_ids: every id must be decodable: text ids inside the tokenizer's vocabulary, audio ids inside the model's
  codebook (codec codes plus the stream BOS/EOS). Out-of-range ids crash embeddings and decoding alike.
- codec_codes: the row has labelled target codes.
- reference_codes: the prompt carries the reference's codec codes (frames with real codes) before the target.
- whisper_features (Whisper on): the row has an <|AUDIO|> span, chunks that fill exactly its positions, features
  for every chunk (not the seed's [0, 128, 3000]), and a reference that is not silent: judged on the waveform's RMS
  when the batch carries waveforms, else on the log-mel features' spread (log-mel of silence is a constant, -1.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_pipeline.loading.collator import select_rows
from data_pipeline.types import IGNORE_INDEX, AudioGeometry, BadSample
from ds_train.monitor.health import HealthCheck


@dataclass(frozen=True)
class BatchRules:
    geometry: AudioGeometry
    text_vocab_size: int  # len(tokenizer): ids at or past it cannot be decoded
    audio_in_token_id: int  # <|AUDIO|>
    whisper: bool
    silent_rms: float
    silent_feature_std: float


@dataclass(frozen=True)
class RowFailure:
    check: HealthCheck
    row: int
    sample_id: str
    reason: str


def find_row_failures(batch: dict, rules: BatchRules) -> list[RowFailure]:
    """At most one failure per row (the first rule it breaks, in the order of the module docstring). Vectorised over
    the batch: it runs on the training process's critical path, once per micro-batch."""
    ids = batch["sample_ids"]
    failures: dict[int, RowFailure] = {}

    def fail(check: HealthCheck, rows: torch.Tensor, reason) -> None:
        for row in rows.nonzero().flatten().tolist():
            failures.setdefault(row, RowFailure(check, row, ids[row], reason(row)))

    text, attention = batch["input_ids"], batch["attention_mask"].bool()  # [B, L]
    bad_text = ((text < 0) | (text >= rules.text_vocab_size)) & attention
    fail(HealthCheck.DECODE_IDS, bad_text.any(1), lambda r: (
        f"{int(bad_text[r].sum())} text ids outside the tokenizer's [0, {rules.text_vocab_size}), "
        f"e.g. {int(text[r][bad_text[r]][0])}"
    ))  # fmt: skip
    codes, labels, mask = batch["audio_input_ids"], batch["audio_labels"], batch["audio_input_ids_mask"].bool()
    size = rules.geometry.model_codebook_size
    bad_audio = (((codes < 0) | (codes >= size)) | ((labels != IGNORE_INDEX) & ((labels < 0) | (labels >= size))))
    bad_audio = bad_audio & mask[..., None]  # [B, F, C]
    fail(HealthCheck.DECODE_IDS, bad_audio.flatten(1).any(1), lambda r: (
        f"{int(bad_audio[r].sum())} audio ids outside the codebook [0, {size}), "
        f"e.g. {int(codes[r][bad_audio[r]][0]) if bool(codes[r][bad_audio[r]].numel()) else '?'}"
    ))  # fmt: skip
    labelled = (labels != IGNORE_INDEX).any(-1) & mask  # [B, F]
    fail(HealthCheck.CODEC_CODES, ~labelled.any(1), lambda r: (
        f"no labelled target codes ({int(mask[r].sum())} audio frames)"
    ))  # fmt: skip
    first_target = labelled.float().argmax(1)  # [B] (0 where nothing is labelled: that row failed above)
    before = torch.arange(codes.shape[1])[None, :] < first_target[:, None]  # [B, F]
    reference_codes = ((codes[..., 0] < rules.geometry.codec_codebook_size) & before & mask).sum(1)  # [B]
    fail(HealthCheck.REFERENCE_CODES, reference_codes == 0, lambda r: (
        f"no reference codec codes before the target ({int(first_target[r])} frames of stream markers only)"
    ))  # fmt: skip
    if rules.whisper:
        for row, reason in _whisper_problems(batch, rules).items():
            failures.setdefault(row, RowFailure(HealthCheck.WHISPER_FEATURES, row, ids[row], reason))
    return sorted(failures.values(), key=lambda f: f.row)


def collate_screened(collate, rules: BatchRules, examples: list) -> dict:
    """`collate(examples)` without the rows that fail a check: they join the batch's `bad_samples` (id and
    "[health:<check>] reason"), so a reader that skips bad rows (the evaluator) skips and counts them too."""
    batch = collate(examples)
    if batch.get("empty"):
        return batch
    failures = find_row_failures(batch, rules)
    if not failures:
        return batch
    bad = [*batch.get("bad_samples", []),
           *(BadSample(f.sample_id, f"[health:{f.check.value}] {f.reason}") for f in failures)]  # fmt: skip
    kept = without_rows(batch, failures)
    return {"bad_samples": bad, "empty": True} if kept is None else {**kept, "bad_samples": bad}


def without_rows(batch: dict, failures: list[RowFailure]) -> dict | None:
    """The batch without the failing rows (their Whisper chunks with them); None when no row is left."""
    keep = sorted(set(range(len(batch["sample_ids"]))) - {f.row for f in failures})
    return select_rows(batch, keep) if keep else None


def _whisper_problems(batch: dict, rules: BatchRules) -> dict[int, str]:
    """row -> why its reference cannot condition the model through Whisper."""
    rows = len(batch["sample_ids"])
    owner = batch.get("whisper_chunk_sample", torch.zeros(0, dtype=torch.long))
    counts = batch.get("whisper_token_counts", torch.zeros(0, dtype=torch.long))
    features = batch.get("whisper_input_features")
    waves = batch.get("whisper_waveforms")
    have = features.shape[0] if features is not None else waves.shape[0] if waves is not None else 0
    if have != owner.numel():
        shape = tuple(features.shape) if features is not None else None
        reason = f"Whisper features {shape} for {owner.numel()} reference chunks"
        return dict.fromkeys(range(rows), reason)
    silent = _silent_chunks(batch, rules) if have else torch.zeros(0, dtype=torch.bool)
    positions = (batch["input_ids"] == rules.audio_in_token_id).sum(1).tolist()  # per row
    owner = owner.long().cpu()
    chunks = torch.bincount(owner, minlength=rows).tolist()
    filled = torch.zeros(rows, dtype=torch.long).index_add_(0, owner, counts.long().cpu()).tolist()
    silent_chunks = torch.bincount(owner[silent], minlength=rows).tolist()
    problems: dict[int, str] = {}
    for row in range(rows):
        if positions[row] == 0:
            problems[row] = "no <|AUDIO|> span in the prompt although Whisper conditioning is on"
        elif chunks[row] == 0:
            problems[row] = f"{positions[row]} <|AUDIO|> positions but no reference chunk (empty features)"
        elif filled[row] != positions[row]:
            problems[row] = f"reference chunks fill {filled[row]} of {positions[row]} <|AUDIO|> positions"
        elif silent_chunks[row] == chunks[row]:
            problems[row] = "the reference is silent (" + _silence_measure(batch, rules) + ")"
    return problems


SILENCE_STRIDE = 8  # judge silence on every 8th sample / feature frame: a constant stays constant, and it is 8x cheaper


def _silent_chunks(batch: dict, rules: BatchRules) -> torch.Tensor:
    """[N] bool: chunk carries no signal (on a strided subset of its samples or feature frames)."""
    if "whisper_waveforms" in batch:  # zero past each length, so the padded sum is the sum over the audio
        waves = batch["whisper_waveforms"][:, ::SILENCE_STRIDE].float()
        counts = (batch["whisper_lengths"].to(waves.device) + SILENCE_STRIDE - 1) // SILENCE_STRIDE
        rms = (waves.square().sum(1) / counts.clamp(min=1)).sqrt()
        return rms.cpu() < rules.silent_rms
    features = batch["whisper_input_features"][:, :, ::SILENCE_STRIDE].float()  # [N, 128, T']
    valid = batch["whisper_attention_mask"][:, ::SILENCE_STRIDE].bool()[:, None, :].to(features.device)
    count = (valid.sum((1, 2)) * features.shape[1]).clamp(min=1)
    mean = (features * valid).sum((1, 2)) / count
    var = (((features - mean[:, None, None]) * valid) ** 2).sum((1, 2)) / count
    return (var.sqrt() < rules.silent_feature_std).cpu() | (valid.sum((1, 2)) < 2).cpu()


def _silence_measure(batch: dict, rules: BatchRules) -> str:
    if "whisper_waveforms" in batch:
        return f"waveform RMS below monitor.silent_rms={rules.silent_rms:g}"
    return f"log-mel features vary by less than monitor.silent_feature_std={rules.silent_feature_std:g}"
