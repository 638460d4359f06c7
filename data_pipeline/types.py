"""Types shared by the data pipeline and the model: what a tokenized example is, and the codec geometry the model sees.

The model may import this module (it holds no data-loading code); everything else in `data_pipeline` builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label value of unlabelled positions (the cross-entropy ignore index)


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
