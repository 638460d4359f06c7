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

from data_pipeline.types import IGNORE_INDEX, AudioGeometry
from ds_train.health import HealthCheck


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
    """At most one failure per row (the first rule it breaks, in the order of the module docstring)."""
    ids = batch["sample_ids"]
    failures: dict[int, RowFailure] = {}

    def fail(check: HealthCheck, row: int, reason: str) -> None:
        failures.setdefault(row, RowFailure(check, row, ids[row], reason))

    for row in range(len(ids)):
        reason = _out_of_range(batch, row, rules)
        if reason:
            fail(HealthCheck.DECODE_IDS, row, reason)
            continue
        frames = batch["audio_input_ids"][row][batch["audio_input_ids_mask"][row]]  # [F, C]
        labelled = (batch["audio_labels"][row][batch["audio_input_ids_mask"][row]] != IGNORE_INDEX).any(-1)  # [F]
        if not bool(labelled.any()):
            fail(HealthCheck.CODEC_CODES, row, f"no labelled target codes ({frames.shape[0]} audio frames)")
            continue
        before_target = frames[: int(labelled.nonzero()[0])]
        if int((before_target[:, 0] < rules.geometry.codec_codebook_size).sum()) == 0:
            fail(
                HealthCheck.REFERENCE_CODES, row,
                f"no reference codec codes before the target ({before_target.shape[0]} frames of stream markers only)",
            )  # fmt: skip
    if rules.whisper:
        for row, reason in _whisper_problems(batch, rules).items():
            fail(HealthCheck.WHISPER_FEATURES, row, reason)
    return sorted(failures.values(), key=lambda f: f.row)


def _out_of_range(batch: dict, row: int, rules: BatchRules) -> str:
    text = batch["input_ids"][row][batch["attention_mask"][row].bool()]
    bad_text = (text < 0) | (text >= rules.text_vocab_size)
    if bool(bad_text.any()):
        return (
            f"{int(bad_text.sum())} text ids outside the tokenizer's [0, {rules.text_vocab_size}), "
            f"e.g. {int(text[bad_text][0])}"
        )
    size = rules.geometry.model_codebook_size
    mask = batch["audio_input_ids_mask"][row]
    codes = batch["audio_input_ids"][row][mask]
    labels = batch["audio_labels"][row][mask]
    bad_codes = (codes < 0) | (codes >= size)
    bad_labels = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= size))
    if bool(bad_codes.any()) or bool(bad_labels.any()):
        example = int(codes[bad_codes][0]) if bool(bad_codes.any()) else int(labels[bad_labels][0])
        return f"{int(bad_codes.sum() + bad_labels.sum())} audio ids outside the codebook [0, {size}), e.g. {example}"
    return ""


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
    problems: dict[int, str] = {}
    positions = (batch["input_ids"] == rules.audio_in_token_id).sum(1)  # [B]
    for row in range(rows):
        mine = owner == row
        filled = int(counts[mine].sum())
        if int(positions[row]) == 0:
            problems[row] = "no <|AUDIO|> span in the prompt although Whisper conditioning is on"
        elif not bool(mine.any()):
            problems[row] = f"{int(positions[row])} <|AUDIO|> positions but no reference chunk (empty features)"
        elif filled != int(positions[row]):
            problems[row] = f"reference chunks fill {filled} of {int(positions[row])} <|AUDIO|> positions"
        elif bool(silent[mine].all()):
            problems[row] = "the reference is silent (" + _silence_measure(batch, rules) + ")"
    return problems


def _silent_chunks(batch: dict, rules: BatchRules) -> torch.Tensor:
    """[N] bool: chunk carries no signal."""
    if "whisper_waveforms" in batch:
        waves, lengths = batch["whisper_waveforms"].float(), batch["whisper_lengths"]
        valid = torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths.to(waves.device)[:, None]
        energy = (waves.square() * valid).sum(1) / lengths.clamp(min=1).to(waves.device)
        return energy.sqrt().cpu() < rules.silent_rms
    features, mask = batch["whisper_input_features"].float(), batch["whisper_attention_mask"].bool()
    silent = []
    for chunk, valid in zip(features, mask, strict=True):
        frames = chunk[:, valid]
        silent.append(frames.numel() < 2 or float(frames.std()) < rules.silent_feature_std)
    return torch.tensor(silent, dtype=torch.bool)


def _silence_measure(batch: dict, rules: BatchRules) -> str:
    if "whisper_waveforms" in batch:
        return f"waveform RMS below monitor.silent_rms={rules.silent_rms:g}"
    return f"log-mel features vary by less than monitor.silent_feature_std={rules.silent_feature_std:g}"
