"""Pads tokenized voice-cloning examples into a batch and computes Whisper features for the references."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_pipeline.layout.whisper_features import EmptyWhisperFeaturesError, WhisperLogMel, empty_features
from data_pipeline.types import IGNORE_INDEX, AudioGeometry, BadSample, VoiceCloningExample

__all__ = ["EmptyWhisperFeaturesError", "VoiceCloningCollator", "select_rows"]


@dataclass
class VoiceCloningCollator:
    """Collates `VoiceCloningExample`s.

    Output (B examples, L max tokens, F max audio frames, C codebooks, N Whisper chunks):
      input_ids [B, L], attention_mask [B, L], labels [B, L],
      audio_input_ids [B, F, C], audio_input_ids_mask [B, F] (bool), audio_labels [B, F, C],
      whisper_input_features [N, 128, 3000], whisper_attention_mask [N, 3000],
      whisper_token_counts [N] (valid <|AUDIO|> positions each chunk fills), whisper_chunk_sample [N] (batch row),
      or, with `whisper_on_device`, whisper_waveforms [N, S] (16 kHz, zero-padded to the longest chunk) and
      whisper_lengths [N] in place of the features and mask, for `WhisperLogMel` to run on the training device,
      sample_ids: list[str], bad_samples: list[BadSample] (rows that failed to load, dropped here).
    A batch with no loadable row is {"bad_samples": [...], "empty": True}.
    Chunks are ordered by batch row then position, the order of the <|AUDIO|> spans in the flattened input_ids.
    """

    pad_token_id: int
    geometry: AudioGeometry
    whisper: bool = True
    whisper_on_device: bool = False

    def __post_init__(self) -> None:
        self.log_mel = WhisperLogMel() if self.whisper and not self.whisper_on_device else None

    def __call__(self, examples: list[VoiceCloningExample | BadSample]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        bad = [ex for ex in examples if isinstance(ex, BadSample)]
        examples = [ex for ex in examples if not isinstance(ex, BadSample)]
        if not examples:
            return {"bad_samples": bad, "empty": True}
        batch_size = len(examples)
        max_len = max(ex.num_tokens for ex in examples)
        max_frames = max(ex.audio_frames.shape[0] for ex in examples)
        num_codebooks = self.geometry.num_codebooks

        input_ids = torch.full((batch_size, max_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, max_len), dtype=torch.long)
        labels = torch.full((batch_size, max_len), IGNORE_INDEX, dtype=torch.long)
        audio_input_ids = torch.full(
            (batch_size, max_frames, num_codebooks), self.geometry.stream_eos, dtype=torch.long
        )
        audio_mask = torch.zeros((batch_size, max_frames), dtype=torch.bool)
        audio_labels = torch.full((batch_size, max_frames, num_codebooks), IGNORE_INDEX, dtype=torch.long)
        for row, ex in enumerate(examples):
            n, f = ex.num_tokens, ex.audio_frames.shape[0]
            input_ids[row, :n] = ex.input_ids
            attention_mask[row, :n] = 1
            labels[row, :n] = ex.labels
            audio_input_ids[row, :f] = ex.audio_frames
            audio_mask[row, :f] = True
            audio_labels[row, :f] = ex.audio_labels

        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "audio_input_ids": audio_input_ids,
            "audio_input_ids_mask": audio_mask,
            "audio_labels": audio_labels,
            "sample_ids": [ex.sample_id for ex in examples],
            "bad_samples": bad,
        }
        if self.whisper:
            batch.update(self._whisper_features(examples))
        return batch

    def _whisper_features(self, examples: list[VoiceCloningExample]) -> dict:
        """A row without reference chunks gets none (it is not refused here, in a DataLoader worker where raising
        would end the run): the trainer's batch checks drop it and report it by sample id."""
        chunks: list[torch.Tensor] = []
        counts: list[int] = []
        rows: list[int] = []
        for row, ex in enumerate(examples):
            # zip, not strict: a malformed row keeps the chunks it has; the checks see it fill too few positions
            for chunk, count in zip(ex.whisper_chunks, ex.whisper_tokens):  # noqa: B905
                chunks.append(chunk.float())
                counts.append(count)
                rows.append(row)
        lengths = torch.tensor([c.numel() for c in chunks], dtype=torch.long)
        waves = torch.zeros(len(chunks), int(lengths.max()) if chunks else 0)
        for i, chunk in enumerate(chunks):
            waves[i, : chunk.numel()] = chunk
        out = {
            "whisper_token_counts": torch.tensor(counts, dtype=torch.long),
            "whisper_chunk_sample": torch.tensor(rows, dtype=torch.long),
        }
        if self.log_mel is None:
            return {**out, "whisper_waveforms": waves, "whisper_lengths": lengths}
        features, mask = self.log_mel(waves, lengths) if chunks else empty_features()
        return {**out, "whisper_input_features": features, "whisper_attention_mask": mask}


ROW_KEYS = ("input_ids", "attention_mask", "labels", "audio_input_ids", "audio_input_ids_mask", "audio_labels")
CHUNK_KEYS = (
    "whisper_input_features", "whisper_attention_mask", "whisper_waveforms", "whisper_lengths", "whisper_token_counts",
)  # fmt: skip


def select_rows(batch: dict, keep: list[int]) -> dict:
    """The collated batch restricted to the rows `keep` (in order), their Whisper chunks with them; other keys are
    kept as they are. Every chunk tensor must have one entry per `whisper_chunk_sample` entry."""
    out = dict(batch)
    index = torch.tensor(keep, dtype=torch.long)
    for key in ROW_KEYS:
        if key in batch:
            out[key] = batch[key][index]
    out["sample_ids"] = [batch["sample_ids"][i] for i in keep]
    if "whisper_chunk_sample" in batch:
        owner = batch["whisper_chunk_sample"]
        chunks = torch.isin(owner, index).nonzero().flatten()
        new_row = {old: new for new, old in enumerate(keep)}
        out["whisper_chunk_sample"] = torch.tensor([new_row[int(owner[i])] for i in chunks], dtype=torch.long)
        for key in CHUNK_KEYS:
            if key in batch:
                out[key] = batch[key][chunks]
    return out
