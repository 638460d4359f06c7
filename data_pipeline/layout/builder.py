"""The voice-cloning token layout: one training sample as token ids, audio frames and labels.

Layout (Llama-3 chat format, as Higgs Audio v2's own voice-cloning generation uses it):

    system:    "Generate audio following instruction." [+ scene description]
    user:      reference transcript [+ <|audio_bos|><|AUDIO|>*n<|audio_eos|> when Whisper conditioning is on]
    assistant: <|audio_out_bos|> reference audio frames <|audio_eos|>
    user:      target text
    assistant: <|audio_out_bos|> target audio frames <|audio_eos|>     <- the only labelled part

With a text head (`text_labels`) the text labels are those of the original Higgs Audio trainer: in the target assistant
turn, `<|audio_out_bos|>`, `<|audio_eos|>` and the closing `<|eot_id|>` (its inference lets the text head enter and
leave audio mode); never user text, never the audio placeholders between them.

Audio frames occupy `<|AUDIO_OUT|>` positions followed by C-1 delay-token positions (the tail of the delay pattern).
Labels are aligned with the inputs (label[t] is the token AT t); the model's loss shifts them, so position t-1 learns to
predict token t. Never shift here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from data_pipeline.layout.delay_pattern import add_stream_markers_and_delay
from data_pipeline.layout.text_tokens import AUDIO_EOS, AUDIO_OUT, AUDIO_OUT_BOS, SpecialTokenIds
from data_pipeline.layout.whisper_features import WHISPER_CHUNK_SAMPLES
from data_pipeline.types import IGNORE_INDEX, AudioGeometry, VoiceCloningExample

SYSTEM_PROMPT = "Generate audio following instruction."
# Whisper: 100 mel frames/s (hop 160 samples at 16 kHz), conv stride 2 -> 50/s, then 2x average pooling -> 25/s.
WHISPER_HOP_SAMPLES = 160


@dataclass
class LayoutOptions:
    whisper: bool = True
    whisper_turn: str = "user"  # "user" or "system": which turn carries the reference waveform's <|AUDIO|> span
    # label the target assistant turn's <|audio_out_bos|>, <|audio_eos|> and <|eot_id|> as text (with a text head)
    text_labels: bool = False
    label_stream_eos: bool = True  # each codebook's own stream EOS: the model must learn to stop (as the original
    # trainer does; transformers' processor masks it)


def whisper_token_count(num_samples: int) -> int:
    """Number of <|AUDIO|> positions a chunk of `num_samples` 16 kHz samples fills (at most 750 per 30 s chunk).

    The original trainer's count (boson-ai/higgs-audio, `_get_feat_extract_output_lengths` of its Whisper tower on
    the feature extractor's attention mask): mel frames that start inside the audio, ceil(n / 160); the stride-2 conv
    keeps (frames - 1) // 2 + 1; the kernel-2 stride-2 average pooling keeps (conv - 2) // 2 + 1, so a trailing
    half-pair is dropped, never padded. One difference: a chunk of 320 samples or fewer (20 ms: only ever the tail of a
    reference longer than 30 s) gets 1 position here, 0 there, so every chunk keeps its span."""
    frames = -(-num_samples // WHISPER_HOP_SAMPLES)  # ceil
    conv = (frames - 1) // 2 + 1
    return max(1, (conv - 2) // 2 + 1)


def _chunk_lengths(num_samples: int) -> list[int]:
    full, rest = divmod(num_samples, WHISPER_CHUNK_SAMPLES)
    return [WHISPER_CHUNK_SAMPLES] * full + ([rest] if rest else [])


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
        # The template's fixed pieces (headers, system prompt, "\n\n") are tokenized for every example: keep them.
        self._fixed_text = lru_cache(maxsize=64)(self._tokenize)

    def __getstate__(self) -> dict:
        """Without the cache of fixed pieces (a bound lru_cache does not pickle): DataLoader workers started by spawn
        (the default on macOS) receive the dataset, and with it this builder, pickled."""
        return {k: v for k, v in self.__dict__.items() if k != "_fixed_text"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fixed_text = lru_cache(maxsize=64)(self._tokenize)

    def _tokenize(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text(self, text: str) -> list[int]:
        return list(self._fixed_text(text))

    def _header(self, role: str) -> list[int]:
        return [self.ids.start_header, *self._text(role), self.ids.end_header]

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

    def _segments(
        self,
        ref_text: str,
        text: str,
        ref_frames: int,
        target_frames: int,
        whisper_tokens: list[int],
        scene: str | None,
    ) -> list[tuple[str, object]]:
        """The sample as ("text", str) pieces tokenized as a whole, as the chat template's rendered string would be
        between special tokens; ("ids", [...]) special tokens; ("audio", frames) an audio-out span; ("label", bool)
        switches text labelling on/off (inside it an audio span labels only its <|audio_out_bos|> and <|audio_eos|>,
        as the original trainer, whose single <|AUDIO_OUT|> text label is replaced by the audio labels)."""
        ids, opts = self.ids, self.options
        if opts.whisper_turn not in ("user", "system"):
            raise ValueError(f"whisper_turn must be 'user' or 'system', got {opts.whisper_turn!r}")
        audio_in = self._audio_in_spans(whisper_tokens) if opts.whisper else []
        system = "\n\n" + SYSTEM_PROMPT + ("\n\n" if scene else "")
        segments: list[tuple[str, object]] = [("ids", [ids.begin_of_text, *self._header("system")]), ("text", system)]
        if scene:
            segments += [("ids", [ids.scene_start]), ("text", f"\n{scene}\n"), ("ids", [ids.scene_end])]
        if opts.whisper_turn == "system":
            segments.append(("ids", audio_in))
        segments += [("ids", [ids.eot, *self._header("user")]), ("text", "\n\n" + ref_text)]
        if opts.whisper_turn == "user":
            segments.append(("ids", audio_in))
        segments += [
            ("ids", [ids.eot, *self._header("assistant")]), ("text", "\n\n"), ("audio", ref_frames),
            ("ids", [ids.eot, *self._header("user")]), ("text", "\n\n" + text),
            ("ids", [ids.eot, *self._header("assistant")]), ("text", "\n\n"),
            ("label", True), ("audio", target_frames), ("ids", [ids.eot]), ("label", False),
        ]  # fmt: skip
        return segments

    def render_text(self, ref_text: str, text: str, scene: str | None = None) -> str:
        """The same sample as one chat string with a single <|AUDIO_OUT|> per audio (whisper off), the form
        transformers' HiggsAudioV2Processor expands: used to check that both agree token for token."""
        out = []
        for kind, value in self._segments(ref_text, text, 1, 1, [], scene):
            if kind == "text":
                out.append(value)
            elif kind == "ids":
                out.append(self.tokenizer.decode(value))
            elif kind == "audio":
                out.append(AUDIO_OUT_BOS + AUDIO_OUT + AUDIO_EOS)
        return "".join(out)

    def token_count(
        self, ref_text: str, text: str, ref_steps: int, target_steps: int, ref_samples16k: int, scene: str | None = None
    ) -> int:
        """len(build(...).input_ids) without building tensors."""
        delay = self.geometry.num_codebooks - 1
        whisper_tokens = (
            [whisper_token_count(n) for n in _chunk_lengths(ref_samples16k)] if self.options.whisper else []
        )
        total = 0
        for kind, value in self._segments(ref_text, text, ref_steps + 2 + delay, target_steps + 2 + delay,
                                          whisper_tokens, scene):  # fmt: skip
            if kind == "text":
                total += len(self._text(value))
            elif kind == "ids":
                total += len(value)
            elif kind == "audio":
                total += value + 2
        return total

    def token_counts(
        self,
        ref_texts: Sequence[str],
        texts: Sequence[str],
        ref_steps: Sequence[int],
        target_steps: Sequence[int],
        ref_samples16k: Sequence[int],
        scenes: Sequence[str | None],
        chunk: int = 4096,
    ) -> list[int]:
        """`token_count` of many examples: their two free texts are tokenized in batches (a fast tokenizer's batch
        call is ~10x cheaper per text than one call each), everything else is the same arithmetic. Each text piece is
        tokenized on its own, so a count is the count with empty texts plus what the texts add."""

        # A fast tokenizer's Rust core counts without transformers' per-text conversion to Python dicts (which was
        # 40 % of the time); the same ids, so the same counts.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)

        def lengths(pieces: list[str]) -> list[int]:
            out: list[int] = []
            for start in range(0, len(pieces), chunk):
                if backend is not None:
                    out += [len(e.ids) for e in backend.encode_batch(pieces[start : start + chunk],
                                                                     add_special_tokens=False)]  # fmt: skip
                else:
                    encoded = self.tokenizer(pieces[start : start + chunk], add_special_tokens=False)["input_ids"]
                    out += [len(ids) for ids in encoded]
            return out

        ref_lengths, text_lengths = lengths(["\n\n" + t for t in ref_texts]), lengths(["\n\n" + t for t in texts])
        empty = len(self._text("\n\n"))
        return [
            self.token_count("", "", rf, tf, rs, sc) - 2 * empty + rl + tl
            for rl, tl, rf, tf, rs, sc in zip(ref_lengths, text_lengths, ref_steps, target_steps, ref_samples16k,
                                               scenes, strict=True)
        ]  # fmt: skip

    def _target_labels(self, frames: torch.Tensor) -> torch.Tensor:
        """Delayed target frames [F, C] -> labels [F, C]: every code, plus each codebook's own stream EOS (its first
        EOS: the end of its codes) when `label_stream_eos`. The stream BOS and the EOS fillers the delay pattern adds
        after a codebook's own EOS are unlabelled, as in the original Higgs Audio trainer, which delays the labels
        [-100, codes, EOS] with -100 fillers (one EOS label per codebook, not C - k)."""
        labels = frames.clone()
        labels[labels == self.geometry.stream_bos] = IGNORE_INDEX
        eos = labels == self.geometry.stream_eos
        own_eos = eos & (eos.cumsum(0) == 1)
        labels[eos & ~own_eos if self.options.label_stream_eos else eos] = IGNORE_INDEX
        return labels

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
        geo, opts = self.geometry, self.options
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

        tokens: list[int] = []
        label_on = False
        marks: list[bool] = []
        for kind, value in self._segments(ref_text, text, ref_frames.shape[0], tgt_frames.shape[0], whisper_tokens,
                                          scene):  # fmt: skip
            if kind == "label":
                label_on = bool(value)
                continue
            piece = self._text(value) if kind == "text" else value if kind == "ids" else self._audio_out_span(value)
            tokens += piece
            if kind == "audio":  # its <|audio_out_bos|> and <|audio_eos|>; the frames are labelled as audio
                marks += [label_on] + [False] * (len(piece) - 2) + [label_on]
            else:
                marks += [label_on] * len(piece)
        input_ids = torch.tensor(tokens, dtype=torch.long)
        labelled = torch.tensor(marks, dtype=torch.bool)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        if opts.text_labels:  # the target assistant turn's <|audio_out_bos|>, <|audio_eos|> and <|eot_id|>
            labels[labelled] = input_ids[labelled]

        audio_frames = torch.cat([ref_frames, tgt_frames], dim=0)
        audio_labels = torch.cat([torch.full_like(ref_frames, IGNORE_INDEX), self._target_labels(tgt_frames)], dim=0)
        return VoiceCloningExample(
            sample_id=sample_id,
            input_ids=input_ids,
            labels=labels,
            audio_frames=audio_frames,
            audio_labels=audio_labels,
            whisper_chunks=chunks,
            whisper_tokens=whisper_tokens,
        )
