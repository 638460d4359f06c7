"""The voice-cloning token layout: one training sample as token ids, audio frames and labels.

Layout (Llama-3 chat format, as Higgs Audio v2's own voice-cloning generation uses it):

    system:    "Generate audio following instruction." [+ scene description]
    user:      reference transcript [+ <|audio_bos|><|AUDIO|>*n<|audio_eos|> when Whisper conditioning is on]
    assistant: <|audio_out_bos|> reference audio frames <|audio_eos|>
    user:      target text
    assistant: <|audio_out_bos|> target audio frames <|audio_eos|>     <- the only labelled part

Audio frames occupy `<|AUDIO_OUT|>` positions followed by C-1 delay-token positions (the tail of the delay pattern).
Labels are aligned with the inputs (label[t] is the token AT t); the model's loss shifts them, so position t-1 learns to
predict token t. Never shift here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from data_pipeline.delay_pattern import add_stream_markers_and_delay
from data_pipeline.text_tokens import SpecialTokenIds

IGNORE_INDEX = -100
SYSTEM_PROMPT = "Generate audio following instruction."
WHISPER_SAMPLE_RATE = 16000
WHISPER_CHUNK_SAMPLES = 30 * WHISPER_SAMPLE_RATE
# Whisper: 100 mel frames/s, conv stride 2 -> 50/s, then 2x average pooling -> 25 tokens/s (640 samples at 16 kHz).
WHISPER_SAMPLES_PER_TOKEN = 640


@dataclass(frozen=True)
class AudioGeometry:
    """Codec geometry as the model sees it: stream BOS/EOS ids sit just past the codec's codebook."""

    num_codebooks: int
    codec_codebook_size: int

    @property
    def stream_bos(self) -> int:
        return self.codec_codebook_size

    @property
    def stream_eos(self) -> int:
        return self.codec_codebook_size + 1

    @property
    def model_codebook_size(self) -> int:
        return self.codec_codebook_size + 2


@dataclass
class LayoutOptions:
    whisper: bool = True
    whisper_turn: str = "user"  # "user" or "system": which turn carries the reference waveform's <|AUDIO|> span
    text_labels: bool = False  # label the target text too (only useful with a text head)
    label_stream_eos: bool = True  # the model must learn to stop; transformers' processor masks it


@dataclass(frozen=True)
class BadSample:
    """A row that failed to load at training time: dropped by the collator, counted by the trainer."""

    sample_id: str
    reason: str


@dataclass
class VoiceCloningExample:
    """One tokenized sample.

    input_ids [L]; labels [L] (text labels, IGNORE_INDEX where unlabelled); audio_frames [F, C] delayed codes for every
    audio-out span in order; audio_labels [F, C]; whisper_chunks: list of 16 kHz waveform chunks (each <= 30 s) whose
    <|AUDIO|> spans appear in input_ids in the same order, with whisper_tokens[i] placeholders each.
    """

    sample_id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    audio_frames: torch.Tensor
    audio_labels: torch.Tensor
    whisper_chunks: list[torch.Tensor]
    whisper_tokens: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def whisper_token_count(num_samples: int) -> int:
    """Number of <|AUDIO|> positions a chunk of `num_samples` 16 kHz samples fills (at most 750 per 30 s chunk)."""
    return max(1, math.ceil(num_samples / WHISPER_SAMPLES_PER_TOKEN))


def split_whisper_chunks(wave_16k: torch.Tensor) -> list[torch.Tensor]:
    """[S] -> chunks of at most 30 s."""
    return [wave_16k[i : i + WHISPER_CHUNK_SAMPLES] for i in range(0, wave_16k.numel(), WHISPER_CHUNK_SAMPLES)]


class LayoutBuilder:
    """Turns (reference, target) pairs into `VoiceCloningExample`s."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        geometry: AudioGeometry,
        options: LayoutOptions | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.ids = SpecialTokenIds.from_tokenizer(tokenizer)
        self.geometry = geometry
        self.options = options or LayoutOptions()

    def _text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _header(self, role: str) -> list[int]:
        return [self.ids.start_header, *self._text(role), self.ids.end_header, *self._text("\n\n")]

    def _audio_out_span(self, num_frames: int) -> list[int]:
        delay_positions = self.geometry.num_codebooks - 1
        return [
            self.ids.audio_out_bos,
            *([self.ids.audio_out] * (num_frames - delay_positions)),
            *([self.ids.audio_delay] * delay_positions),
            self.ids.audio_eos,
        ]

    def _audio_in_spans(self, token_counts: list[int]) -> list[int]:
        out: list[int] = []
        for n in token_counts:
            out += [self.ids.audio_in_bos, *([self.ids.audio_in] * n), self.ids.audio_eos]
        return out

    def token_count(
        self, ref_text: str, text: str, ref_steps: int, target_steps: int, ref_samples16k: int, scene: str | None = None
    ) -> int:
        """len(build(...).input_ids) without building tensors: every piece is tokenized separately, so counts add up."""
        delay = self.geometry.num_codebooks - 1
        n_text = len(self._text(ref_text)) + len(self._text(text))
        fixed = self._fixed_tokens()
        if scene:
            fixed += len(self._text("\n\n")) + 2 + len(self._text(f"\n{scene}\n"))
        audio_out = (ref_steps + 2 + delay + 2) + (target_steps + 2 + delay + 2)
        audio_in = 0
        if self.options.whisper:
            chunks = max(1, -(-ref_samples16k // WHISPER_CHUNK_SAMPLES))
            full, rest = divmod(ref_samples16k, WHISPER_CHUNK_SAMPLES)
            counts = [whisper_token_count(WHISPER_CHUNK_SAMPLES)] * full + ([whisper_token_count(rest)] if rest else [])
            audio_in = sum(counts) + 2 * chunks
        return fixed + n_text + audio_out + audio_in

    def _fixed_tokens(self) -> int:
        if not hasattr(self, "_fixed"):
            headers = sum(len(self._header(role)) for role in ("system", "user", "assistant", "user", "assistant"))
            # begin_of_text + system prompt + 5 x eot
            self._fixed = 1 + headers + len(self._text(SYSTEM_PROMPT)) + 5
        return self._fixed

    def build(
        self,
        sample_id: str,
        ref_text: str,
        ref_codes: torch.Tensor,
        text: str,
        target_codes: torch.Tensor,
        ref_wave_16k: torch.Tensor | None = None,
        scene: str | None = None,
    ) -> VoiceCloningExample:
        """ref_codes / target_codes: [C, T] codec codes; ref_wave_16k: [S] float waveform for the Whisper tower."""
        geo, opts, ids = self.geometry, self.options, self.ids
        for name, codes in (("reference", ref_codes), ("target", target_codes)):
            if codes.dim() != 2 or codes.shape[0] != geo.num_codebooks:
                raise ValueError(
                    f"{sample_id}: {name} codes have shape {tuple(codes.shape)}, expected [{geo.num_codebooks}, T]"
                )
            if codes.numel() == 0:
                raise ValueError(f"{sample_id}: {name} codes are empty")
            if int(codes.min()) < 0 or int(codes.max()) >= geo.codec_codebook_size:
                raise ValueError(
                    f"{sample_id}: {name} codes outside [0, {geo.codec_codebook_size}): "
                    f"min {int(codes.min())}, max {int(codes.max())}"
                )
        ref_frames = add_stream_markers_and_delay(ref_codes, geo.stream_bos, geo.stream_eos)
        tgt_frames = add_stream_markers_and_delay(target_codes, geo.stream_bos, geo.stream_eos)

        chunks: list[torch.Tensor] = []
        if opts.whisper:
            if ref_wave_16k is None or ref_wave_16k.numel() == 0:
                raise ValueError(f"{sample_id}: Whisper conditioning is on but the reference waveform is empty")
            chunks = split_whisper_chunks(ref_wave_16k.float())
        whisper_tokens = [whisper_token_count(c.numel()) for c in chunks]
        audio_in = self._audio_in_spans(whisper_tokens)

        system = SYSTEM_PROMPT
        system_ids = self._text(system)
        if scene:
            system_ids += self._text("\n\n") + [ids.scene_start, *self._text(f"\n{scene}\n"), ids.scene_end]
        if opts.whisper and opts.whisper_turn == "system":
            system_ids += audio_in
        ref_user_ids = self._text(ref_text)
        if opts.whisper and opts.whisper_turn == "user":
            ref_user_ids += audio_in
        if opts.whisper_turn not in ("user", "system"):
            raise ValueError(f"whisper_turn must be 'user' or 'system', got {opts.whisper_turn!r}")

        prompt = [ids.begin_of_text, *self._header("system"), *system_ids, ids.eot]
        prompt += [*self._header("user"), *ref_user_ids, ids.eot]
        prompt += [*self._header("assistant"), *self._audio_out_span(ref_frames.shape[0]), ids.eot]
        target_text_ids = self._text(text)
        prompt += [*self._header("user")]
        text_start = len(prompt)
        prompt += [*target_text_ids, ids.eot]
        text_end = len(prompt)  # the <|eot_id|> closing the target text is labelled with it
        prompt += self._header("assistant")
        target_span = self._audio_out_span(tgt_frames.shape[0])
        input_ids = torch.tensor(prompt + target_span + [ids.eot], dtype=torch.long)

        labels = torch.full_like(input_ids, IGNORE_INDEX)
        if opts.text_labels:
            labels[text_start:text_end] = input_ids[text_start:text_end]

        audio_frames = torch.cat([ref_frames, tgt_frames], dim=0)
        tgt_labels = tgt_frames.clone()
        tgt_labels[tgt_labels == geo.stream_bos] = IGNORE_INDEX
        if not opts.label_stream_eos:
            tgt_labels[tgt_labels == geo.stream_eos] = IGNORE_INDEX
        audio_labels = torch.cat([torch.full_like(ref_frames, IGNORE_INDEX), tgt_labels], dim=0)
        return VoiceCloningExample(
            sample_id=sample_id,
            input_ids=input_ids,
            labels=labels,
            audio_frames=audio_frames,
            audio_labels=audio_labels,
            whisper_chunks=chunks,
            whisper_tokens=whisper_tokens,
        )
