"""Every N steps (rank 0): the reference, target and teacher-forced predicted audio decoded through the codec, to
TensorBoard, each clip captioned (role, sample id, speaker, transcript: the audio card's description and a text card
at the same step), with their mel spectrograms stacked on one time and colour scale, and the prompt as text with runs
of a special token collapsed; at evaluations, every generated sample likewise. All ids pass through `safe_decode`
first; nothing here raises into training."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch

from data_pipeline.layout.delay_pattern import revert_delay
from data_pipeline.layout.text_tokens import SpecialTokenIds
from data_pipeline.types import IGNORE_INDEX, AudioGeometry
from ds_train.evaluation.generation_eval import GeneratedAudio
from ds_train.evaluation.spectrograms import spectrogram_image
from ds_train.monitor.safe_decode import safe_decode_text, sanitize_codes

log = logging.getLogger("ds_train")

DECODES_KEPT = 4  # decoded reference / target waveforms kept (two per logged prefix: samples, eval_samples)
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]+\|>")
SPECIAL_RUN = re.compile(r"(<\|[^|<>\s]+\|>)(?:\1)+")
GENERATED = "eval_generated"  # TensorBoard prefix of the generated eval samples: eval_generated/<k>/<role>


def collapse_special_runs(text: str) -> str:
    """`<|AUDIO_OUT|><|AUDIO_OUT|>...` (n times) -> `<|AUDIO_OUT|> x n`: a prompt's transcripts stay readable."""
    return SPECIAL_RUN.sub(lambda m: f"{m.group(1)} x {len(m.group(0)) // len(m.group(1))}", text)


def plain_text(text: str) -> str:
    """Decoded text without special tokens (a turn's transcript)."""
    return " ".join(SPECIAL_TOKEN.sub(" ", text).split())


def caption(role: str, sample_id: str, speaker: str | None, transcript: str) -> str:
    return f"{role} | sample {sample_id} | speaker {speaker or '?'} | \"{transcript}\""


def captions_table(rows: Sequence[tuple[str, str, str | None, str, float]]) -> str:
    """Markdown table of (role, sample id, speaker, transcript, seconds) rows: the text card beside the audio."""
    lines = ["| role | sample | speaker | transcript | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r} | {i} | {s or '?'} | {t.replace('|', '/')} | {sec:.2f} |" for r, i, s, t, sec in rows]
    return "\n".join(lines)


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
    def __init__(
        self, writer, tokenizer, codec, geometry: AudioGeometry, audio_token: int, delay_token: int,
        speakers: dict[str, str | None] | None = None,
    ) -> None:  # fmt: skip
        """`speakers`: sample id -> speaker, for the captions (a sample it lacks is captioned with speaker ?)."""
        self.writer = writer
        self.speakers = speakers or {}
        self.tokenizer = tokenizer
        self.codec = codec
        self.geometry = geometry
        self.special = SpecialTokenIds.from_tokenizer(tokenizer)
        self.audio_token, self.delay_token = audio_token, delay_token
        self.invalid_ids = 0
        # Evaluations log the same eval sample each time: its reference and real target decode to the same audio, so
        # the last few decodes are kept (a codec decode was the largest cost of logging a sample).
        self._decoded: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _turn_ids(self, ids: torch.Tensor, back: int) -> torch.Tensor:
        """The tokens of the turn `back` headers from the end, from one sample's input_ids [L]: back=2 is the target
        text (the final header is the assistant's), back=4 the reference transcript."""
        seq = ids.tolist()
        headers = [i for i, t in enumerate(seq) if t == self.special.end_header]
        if len(headers) < back:
            return ids[:0]
        start = headers[-back] + 1
        end = next((i for i in range(start, len(seq)) if seq[i] == self.special.eot), len(seq))
        return ids[start:end]

    def _text(self, ids: torch.Tensor) -> str:
        return safe_decode_text(self.tokenizer, ids, pad_id=self.special.pad).text

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

    def log(self, step: int, batch: dict, out, prefix: str = "samples") -> None:
        """The batch's first sample under `prefix`/ (samples, or eval_samples): its prompt and captions as text, its
        reference, target and teacher-forced audio, and their spectrogram image."""
        try:
            self._log(step, batch, out, prefix)
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            log.warning("sample logging at step %d failed and was skipped: %s: %s", step, type(err).__name__, err)

    def log_generated(self, step: int, generated: Sequence[GeneratedAudio], speaker_encoder: str | None) -> None:
        """Each generated eval sample k under `eval_generated/<k>/`: its reference, real target and generated audio
        (captioned), their spectrogram image (titled with its speaker similarity when measured), and one text card of
        captions and measures for them all; never raises."""
        if self.writer is None or not generated:
            return
        try:
            self._log_generated(step, generated, speaker_encoder)
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            log.warning("logging generated samples at step %d failed and was skipped: %s: %s", step,
                        type(err).__name__, err)  # fmt: skip

    def _audio(self, tag: str, wave: torch.Tensor, step: int, description: str) -> None:
        """TensorBoard audio (WAV) with a description, shown on its card (TensorBoard keeps a tag's first one).
        Written in the audio plugin's tensor form [1, 2] (clip, label), which carries metadata."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.audio import metadata
        from torch.utils.tensorboard.summary import audio

        wav = audio(tag, wave.unsqueeze(0), sample_rate=self.codec.sample_rate).value[0].audio.encoded_audio_string
        shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=1), TensorShapeProto.Dim(size=2)])
        tensor = TensorProto(dtype="DT_STRING", string_val=[wav, b""], tensor_shape=shape)
        meta = metadata.create_summary_metadata(tag, description, metadata.Encoding.Value("WAV"))
        summary = Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)])
        self.writer._get_file_writer().add_summary(summary, step)

    def _log_generated(self, step: int, generated: Sequence[GeneratedAudio], speaker_encoder: str | None) -> None:
        sr = self.codec.sample_rate
        rows = []
        measures = ["| sample | stopped | generated / real length | silence | speaker similarity (real target) |",
                    "|---|---|---|---|---|"]  # fmt: skip
        for k, g in enumerate(generated):
            clips = {"reference": (g.reference, g.ref_text), "target": (g.target, g.text),
                     "generated": (g.wave, g.text)}  # fmt: skip
            for role, (wave, transcript) in clips.items():
                rows.append((f"{k}: {role}", g.sample_id, g.speaker, transcript, wave.numel() / sr))
                if wave.numel():
                    described = caption(role, g.sample_id, g.speaker, transcript)
                    self._audio(f"{GENERATED}/{k}/{role}", wave, step, described)
            m = g.measures
            sim = f"{m.speaker_sim:.3f} ({m.speaker_sim_target:.3f})" if m.speaker_sim is not None else "n/a"
            measures.append(f"| {g.sample_id} | {'yes' if m.stopped else 'no'} | {m.seconds:.2f} / "
                            f"{m.target_seconds:.2f} s | {m.silence_share:.0%} | {sim} |")  # fmt: skip
            title = f"{g.sample_id} (speaker {g.speaker or '?'})" + (
                f": speaker similarity {m.speaker_sim:.3f}, real target {m.speaker_sim_target:.3f}"
                if m.speaker_sim is not None else "")  # fmt: skip
            waves = {name: wave for name, (wave, _) in clips.items()}
            self.writer.add_image(f"{GENERATED}/{k}/spectrograms", spectrogram_image(waves, sr, title), step,
                                  dataformats="HWC")  # fmt: skip
        similarity = f"speaker similarity by {speaker_encoder}" if speaker_encoder else "speaker similarity: off"
        self.writer.add_text(f"{GENERATED}/captions", "\n\n".join(
            [captions_table(rows), f"free-running (greedy); {similarity}", "\n".join(measures)]), step)

    def _log(self, step: int, batch: dict, out, prefix: str) -> None:
        if self.writer is None:
            return
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].cpu()
        sample_id = batch.get("sample_ids", ["?"])[0]
        speaker = self.speakers.get(sample_id)
        ref_text, target_text = plain_text(self._text(self._turn_ids(ids, 4))), self._text(self._turn_ids(ids, 2))
        prompt = collapse_special_runs(self._text(ids))
        self.writer.add_text(f"{prefix}/prompt", (
            f"**{sample_id}** (speaker {speaker or '?'})\n\nreference transcript: {ref_text}\n\ntarget text: "
            f"{plain_text(target_text)}\n\nthe prompt (runs of a special token collapsed):\n\n    "
            + prompt.replace("\n", "\n    ")
        ), step)  # fmt: skip
        self.writer.add_text(f"{prefix}/target_text", target_text.strip(), step)

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
        waves, captions = {}, []
        roles = (("reference", ref_frames, ref_text), ("target", tgt_frames, plain_text(target_text)),
                 ("predicted_teacher_forced", predicted, plain_text(target_text)))  # fmt: skip
        for name, fr, transcript in roles:
            waves[name] = self._decode(self._codes(fr), remember=name != "predicted_teacher_forced")
            captions.append((name, sample_id, speaker, transcript, waves[name].numel() / sr))
            # a training sample changes at every logging step, so its cards' description points at the captions
            described = (f"{name} of the logged training sample: its id, speaker and transcript are in "
                         f"{prefix}/captions at the same step") if prefix == "samples" else caption(*captions[-1][:4])
            self._audio(f"{prefix}/{name}", waves[name], step, described)
        self.writer.add_text(f"{prefix}/captions", captions_table(captions), step)
        title = f"{sample_id} (speaker {speaker or '?'})"
        self.writer.add_image(f"{prefix}/spectrograms", spectrogram_image(waves, sr, title), step, dataformats="HWC")
        self.writer.add_scalar("monitor/invalid_ids_in_logging", self.invalid_ids, step)
