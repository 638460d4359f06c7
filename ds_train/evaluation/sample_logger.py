"""Every N steps (rank 0): the prompt as text, and the reference, target and teacher-forced predicted audio decoded
through the codec, to TensorBoard, with their mel spectrograms side by side on one colour scale (and, at evaluations,
the generated audio next to them). All ids pass through `safe_decode` first; nothing here raises into training."""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from data_pipeline.layout.delay_pattern import revert_delay
from data_pipeline.layout.text_tokens import SpecialTokenIds
from data_pipeline.types import IGNORE_INDEX, AudioGeometry
from ds_train.evaluation.spectrograms import spectrogram_image
from ds_train.monitor.safe_decode import safe_decode_text, sanitize_codes

log = logging.getLogger("ds_train")

DECODES_KEPT = 4  # decoded reference / target waveforms kept (two per logged prefix: samples, eval_samples)


def audio_spans(input_ids: torch.Tensor, special: SpecialTokenIds, audio_token: int, delay_token: int) -> list[int]:
    """Frame count of each <|audio_out_bos|> ... <|audio_eos|> span in one sample's input_ids [L], in order."""
    counts: list[int] = []
    inside = False
    for tok in input_ids.tolist():
        if tok == special.audio_out_bos:
            inside = True
            counts.append(0)
        elif inside and tok in (audio_token, delay_token):
            counts[-1] += 1
        elif inside:
            inside = False
    return counts


class SampleLogger:
    def __init__(self, writer, tokenizer, codec, geometry: AudioGeometry, audio_token: int, delay_token: int) -> None:
        self.writer = writer
        self.tokenizer = tokenizer
        self.codec = codec
        self.geometry = geometry
        self.special = SpecialTokenIds.from_tokenizer(tokenizer)
        self.audio_token, self.delay_token = audio_token, delay_token
        self.invalid_ids = 0
        self.last_waves: dict[str, dict[str, torch.Tensor]] = {}  # prefix -> the last logged sample's decoded audio
        # Evaluations log the same eval sample each time: its reference and real target decode to the same audio, so
        # the last few decodes are kept (a codec decode was the largest cost of logging a sample).
        self._decoded: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _target_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The last user turn's tokens (the text the target audio speaks), from one sample's input_ids [L]."""
        seq = ids.tolist()
        headers = [i for i, t in enumerate(seq) if t == self.special.end_header]
        if len(headers) < 2:
            return ids[:0]
        start = headers[-2] + 1  # the final header is the assistant's; the one before opens the target text
        end = next((i for i in range(start, len(seq)) if seq[i] == self.special.eot), len(seq))
        return ids[start:end]

    def _codes(self, frames: torch.Tensor) -> torch.Tensor:
        """Delayed frames [F, C] -> codec codes [C, T] with stream markers and out-of-range ids replaced."""
        codes, bad = sanitize_codes(revert_delay(frames), self.geometry.codec_codebook_size)
        self.invalid_ids += bad
        return codes

    def _decode(self, codes: torch.Tensor, remember: bool) -> torch.Tensor:
        """codes [C, T] -> waveform [S] in [-1, 1]; with `remember`, from the last few decodes when they hold it."""
        key = (tuple(codes.shape), codes.numpy().tobytes()) if remember else None
        if key in self._decoded:
            self._decoded.move_to_end(key)
            return self._decoded[key]
        wave = self.codec.decode(codes).clamp(-1, 1)
        if remember:
            self._decoded[key] = wave
            while len(self._decoded) > DECODES_KEPT:
                self._decoded.popitem(last=False)
        return wave

    def log(self, step: int, batch: dict, out, prefix: str = "samples", spectrograms: bool = True) -> None:
        """The batch's first sample as TensorBoard text and audio under `prefix`/ (samples, or eval_samples), and,
        with `spectrograms`, its spectrogram image (without: `log_codes` or `log_spectrograms` draws it later)."""
        try:
            self._log(step, batch, out, prefix, spectrograms)
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            log.warning("sample logging at step %d failed and was skipped: %s: %s", step, type(err).__name__, err)

    def log_spectrograms(self, step: int, prefix: str) -> None:
        """The spectrogram image of the last sample logged under `prefix` with `spectrograms=False`; never raises."""
        if self.writer is None or prefix not in self.last_waves:
            return
        try:
            image = spectrogram_image(self.last_waves[prefix], self.codec.sample_rate)
            self.writer.add_image(f"{prefix}/spectrograms", image, step, dataformats="HWC")
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            log.warning("spectrograms at step %d failed and were skipped: %s: %s", step, type(err).__name__, err)

    def log_codes(self, step: int, tag: str, codes: torch.Tensor, wave: torch.Tensor | None = None) -> None:
        """codec codes [C, T] (and, when already decoded, their waveform [S]) -> TensorBoard audio `tag`, with the
        spectrograms of the same prefix's last logged sample beside it; never raises."""
        if self.writer is None:
            return
        try:
            if codes.shape[-1] == 0:
                self.writer.add_text(tag, "no complete audio frame was generated", step)
                self.log_spectrograms(step, tag.split("/")[0])
                return
            if wave is None:
                wave = self.codec.decode(sanitize_codes(codes, self.geometry.codec_codebook_size)[0]).clamp(-1, 1)
            self.writer.add_audio(tag, wave.unsqueeze(0), step, sample_rate=self.codec.sample_rate)
            prefix = tag.split("/")[0]
            if prefix in self.last_waves:  # next to the same sample's reference, target and teacher-forced prediction
                waves = {**self.last_waves[prefix], tag.split("/")[-1]: wave}
                image = spectrogram_image(waves, self.codec.sample_rate)
                self.writer.add_image(f"{prefix}/spectrograms_generated", image, step, dataformats="HWC")
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            log.warning("logging %s at step %d failed and was skipped: %s: %s", tag, step, type(err).__name__, err)

    def _log(self, step: int, batch: dict, out, prefix: str, spectrograms: bool) -> None:
        if self.writer is None:
            return
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].cpu()
        prompt = safe_decode_text(self.tokenizer, ids, pad_id=self.special.pad)
        sample_id = batch.get("sample_ids", ["?"])[0]
        self.writer.add_text(f"{prefix}/prompt", f"**{sample_id}**\n\n    {prompt.text}", step)
        target = safe_decode_text(self.tokenizer, self._target_text_ids(ids), pad_id=self.special.pad)
        self.writer.add_text(f"{prefix}/target_text", target.text.strip(), step)

        frames = batch["audio_input_ids"][0][batch["audio_input_ids_mask"][0].bool()].cpu()
        spans = audio_spans(ids, self.special, self.audio_token, self.delay_token)
        if len(spans) < 2 or sum(spans) != frames.shape[0]:
            log.warning("sample logging: cannot split %d frames into audio spans %s", frames.shape[0], spans)
            return
        ref_frames, tgt_frames = frames[: spans[0]], frames[sum(spans[:-1]) :]
        labels = batch["audio_labels"][0][batch["audio_input_ids_mask"][0].bool()].cpu()[sum(spans[:-1]) :]
        predicted = tgt_frames.clone()
        rows = int(out.predicted_rows[0])
        preds = out.predicted_codes[:rows].cpu()
        # Row r predicts the r-th target frame (from 1 on) whose labels are not all masked.
        predicted_at = (labels != IGNORE_INDEX).any(-1).nonzero().flatten()
        if predicted_at.numel() == rows:
            keep = labels[predicted_at] != IGNORE_INDEX
            predicted[predicted_at] = torch.where(keep, preds, tgt_frames[predicted_at])
        sr = self.codec.sample_rate
        waves = {}
        for name, fr in (("reference", ref_frames), ("target", tgt_frames), ("predicted_teacher_forced", predicted)):
            waves[name] = self._decode(self._codes(fr), remember=name != "predicted_teacher_forced")
            self.writer.add_audio(f"{prefix}/{name}", waves[name].unsqueeze(0), step, sample_rate=sr)
        self.last_waves[prefix] = waves
        if spectrograms:
            self.writer.add_image(f"{prefix}/spectrograms", spectrogram_image(waves, sr), step, dataformats="HWC")
        self.writer.add_scalar("monitor/invalid_ids_in_logging", self.invalid_ids, step)
