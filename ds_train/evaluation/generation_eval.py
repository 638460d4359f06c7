"""Free-running generation metrics at each evaluation: does the model stop, at about the right length, without
silence, in the reference's voice?

For a bounded, fixed subset of the eval set (its first `monitor.generate_samples` examples), rank 0 generates every
target from its prompt in one batch (greedy, up to the target's length x `LENGTH_CAP` plus the delay tail, and at most
`monitor.generate_seconds`) and reports under `eval/`:
- `gen_stop_rate`: share that ended with the stream EOS before the length cap ("runs to the maximum length");
- `gen_duration_ratio`: generated / real target duration, mean over the subset;
- `gen_silence_share`: share of 20 ms frames of the decoded audio below `SILENT_FRAME_DBFS` ("silent output");
- with a speaker encoder (by default resemblyzer's GE2E, whose weights ship in its package; `monitor.speaker_model`:
  a local transformers x-vector directory instead): `gen_speaker_sim`, the cosine between speaker embeddings of the
  generated audio and the reference, next to `gen_speaker_sim_target`, the same for the real target (the ceiling).
- with an ASR model (`monitor.asr_model`, a local Whisper directory): `gen_wer`, the word (CJK: character) error rate
  of its transcript against the text, next to `gen_wer_target`, the same for the real target (the floor).
- `gen_time_s`: seconds the subset took to load, generate, decode and measure.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from data_pipeline.codecs import Codec
from data_pipeline.layout.delay_pattern import revert_delay
from data_pipeline.types import AudioGeometry
from ds_train.evaluation.intelligibility import Transcriber, error_counts
from ds_train.evaluation.speaker_similarity import SpeakerEncoder
from ds_train.inference.generate import Prompt, frames_to_codes, generate_frames_batch, prompt_from_batch, stopped
from ds_train.monitor.safe_decode import sanitize_codes

log = logging.getLogger("ds_train")
LENGTH_CAP = 2.0  # generation may run to twice the real target's length (plus the delay tail) before it is cut
SILENT_FRAME_DBFS = -50.0
FRAME_SECONDS = 0.02


@dataclass(frozen=True)
class GeneratedSample:
    sample_id: str
    stopped: bool  # the stream EOS came before the length cap
    seconds: float
    target_seconds: float
    silence_share: float
    speaker_sim: float | None = None
    speaker_sim_target: float | None = None
    errors: int | None = None  # ASR word (or character) errors against the text, and the text's length in units
    errors_target: int | None = None
    text_units: int | None = None


@dataclass
class GeneratedAudio:
    """One generated eval sample with what it is judged against, for TensorBoard: waveforms [S] (empty when nothing
    was generated) of the reference, the real target and the generated audio."""

    sample_id: str
    speaker: str | None
    ref_text: str
    text: str
    reference: torch.Tensor
    target: torch.Tensor
    wave: torch.Tensor
    measures: GeneratedSample = field(repr=False)


def silence_share(wave: torch.Tensor, sample_rate: int, dbfs: float = SILENT_FRAME_DBFS) -> float:
    """Share of the `FRAME_SECONDS` frames of `wave` [S] whose RMS is below `dbfs`; 1.0 for no audio at all."""
    size = max(1, int(sample_rate * FRAME_SECONDS))
    frames = wave.float()[: wave.numel() // size * size].view(-1, size)
    if frames.shape[0] == 0:
        return 1.0
    rms = frames.square().mean(1).sqrt()
    return float((rms < 10 ** (dbfs / 20)).float().mean())


def summarize(samples: list[GeneratedSample]) -> dict[str, float]:
    if not samples:
        return {}
    n = len(samples)
    values = {
        "cloning/gen_samples": float(n),
        "cloning/gen_stop_rate": sum(s.stopped for s in samples) / n,
        "cloning/gen_duration_ratio": sum(s.seconds / max(s.target_seconds, 1e-6) for s in samples) / n,
        "cloning/gen_silence_share": sum(s.silence_share for s in samples) / n,
    }
    if all(s.speaker_sim is not None for s in samples):
        values["cloning/gen_speaker_sim"] = sum(s.speaker_sim for s in samples) / n
        values["cloning/gen_speaker_sim_target"] = sum(s.speaker_sim_target for s in samples) / n
    if all(s.errors is not None for s in samples):  # corpus-level rate: errors over all words of the subset
        units = max(1, sum(s.text_units for s in samples))
        values["cloning/gen_wer"] = sum(s.errors for s in samples) / units
        values["cloning/gen_wer_target"] = sum(s.errors_target for s in samples) / units
    return values


class GenerationEvaluator:
    """Generates the fixed subset and measures it: on rank 0 alone when it holds every weight, on every rank in step
    under ZeRO-3 (`run(synced_ranks=True)`)."""

    def __init__(
        self, dataset, collator, codec: Codec, geometry: AudioGeometry, count: int, audio_out_bos: int,
        audio_placeholders: tuple[int, int], speaker: SpeakerEncoder | None = None, max_frames: int | None = None,
        asr: Transcriber | None = None,
    ) -> None:  # fmt: skip
        self.dataset, self.collator, self.codec, self.geometry = dataset, collator, codec, geometry
        self.indices = list(range(min(count, len(dataset))))
        speakers = dataset.speakers
        self.speakers = {i: speakers[i] for i in self.indices}
        self.audio_out_bos, self.audio_placeholders = audio_out_bos, audio_placeholders
        self.speaker = speaker
        self.max_frames = max_frames  # the generated frames allowed per sample, whatever its target's length
        self.asr = asr
        self.generated: list[GeneratedAudio] = []  # the last run's samples with their audio, for TensorBoard

    def run(self, model, synced_ranks: bool = False, measure: bool = True) -> dict[str, float]:
        """cloning/gen_* over the subset, generated as one batch (examples that fail to load or measure are logged and
        left out). `synced_ranks`: every rank calls this with the same subset, generating in step (ZeRO-3); those that
        do not report pass `measure=False` and get {}."""
        was_training = model.training
        self.generated = []
        started = time.perf_counter()
        try:
            loaded = [item for item in map(self._load, self.indices) if item is not None]
            if not loaded:
                return {}
            caps = [self._cap(target) for _, _, _, target, _ in loaded]
            prompts = [prompt for _, _, prompt, _, _ in loaded]
            frames = generate_frames_batch(model, prompts, max(caps), self.collator.pad_token_id,
                                           synced_ranks=synced_ranks)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - an evaluation extra must never stop training
            log.warning("generation for the eval subset failed and was left out: %s: %s", type(err).__name__, err)
            return {}
        finally:
            model.train(was_training)
        if not measure:
            return {}
        results = []
        for (index, sample_id, _, target, reference), row, cap in zip(loaded, frames, caps, strict=True):
            try:  # each row as if generated alone with its own cap: greedy rows do not depend on their batch
                results.append(self._measure(index, sample_id, row[:cap], target, reference))
            except Exception as err:  # noqa: BLE001
                log.warning("measuring generated eval example %d failed and it was left out: %s: %s", index,
                            type(err).__name__, err)  # fmt: skip
        values = summarize(results)
        if values:
            values["cloning/gen_time_s"] = time.perf_counter() - started
        return values

    def _load(self, index: int) -> tuple[int, str, Prompt, torch.Tensor, torch.Tensor] | None:
        """-> (index, sample id, prompt, target codes [C, T], reference codes [C, T']), or None (logged)."""
        try:
            batch = self.collator([self.dataset[index]])
            if batch.get("empty"):
                raise ValueError("it did not load")
            prompt = prompt_from_batch(batch, 0, self.audio_out_bos, self.audio_placeholders)
            target, reference = self._target_and_reference(batch, prompt.ref_frames)
        except Exception as err:  # noqa: BLE001
            log.warning("eval example %d was left out of generation: %s: %s", index, type(err).__name__, err)
            return None
        return index, batch["sample_ids"][0], prompt, target, reference

    def _cap(self, target_codes: torch.Tensor) -> int:
        """Generated frames allowed for a target [C, T]: LENGTH_CAP x its length plus the delay tail, at most
        `max_frames`."""
        cap = int(LENGTH_CAP * target_codes.shape[1]) + self.geometry.num_codebooks + 1
        return min(cap, self.max_frames or cap)

    def _measure(
        self, index: int, sample_id: str, frames: torch.Tensor, target_codes: torch.Tensor,
        reference_codes: torch.Tensor,
    ) -> GeneratedSample:  # fmt: skip
        """frames [F, C]: one example's generated delayed frames -> its measures."""
        codes = frames_to_codes(frames, self.geometry)
        rate, sr = self.codec.frame_rate, self.codec.sample_rate
        wave = self.codec.decode(codes).clamp(-1, 1) if codes.shape[1] else torch.zeros(0)
        sim = sim_target = errors = errors_target = units = None
        target = self.codec.decode(target_codes).clamp(-1, 1)
        reference = self.codec.decode(reference_codes).clamp(-1, 1)
        row = self.dataset.row_sizes(index)
        if self.speaker is not None:
            voice = self.speaker.embed(reference, sr)  # embedded once
            sim = float(self.speaker.embed(wave, sr) @ voice) if wave.numel() else math.nan
            sim_target = float(self.speaker.embed(target, sr) @ voice)
        if self.asr is not None:
            errors, units = error_counts(row.text, self.asr.transcribe(wave, sr))
            errors_target, _ = error_counts(row.text, self.asr.transcribe(target, sr))
        measures = GeneratedSample(
            sample_id, stopped(frames, self.geometry), codes.shape[1] / rate, target_codes.shape[1] / rate,
            silence_share(wave, sr), sim, sim_target, errors, errors_target, units,
        )  # fmt: skip
        self.generated.append(GeneratedAudio(
            sample_id, self.speakers.get(index), row.ref_text, row.text, reference, target, wave, measures,
        ))  # fmt: skip
        return measures

    def _target_and_reference(self, batch: dict, ref_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codec codes [C, T] of the real target and of the reference (from the delayed frames of the batch)."""
        frames = batch["audio_input_ids"][0][batch["audio_input_ids_mask"][0]]
        size = self.geometry.codec_codebook_size
        reference = sanitize_codes(revert_delay(frames[:ref_frames]), size)[0]
        target = sanitize_codes(revert_delay(frames[ref_frames:]), size)[0]
        return target, reference
