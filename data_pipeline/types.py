"""Types shared by the data pipeline and the model: what a tokenized example is, and the codec geometry the model sees.

The model may import this module (it holds no data-loading code); everything else in `data_pipeline` builds on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


# The keys of a HiggsAudioV2 model config (config.json) that must agree with the codec, in `geometry_mismatch`'s order.
MODEL_GEOMETRY_KEYS = ("num_codebooks", "codebook_size", "audio_stream_bos_id", "audio_stream_eos_id")


def geometry_mismatch(model_config: Mapping[str, Any], geometry: AudioGeometry) -> str | None:
    """Why a model with this config (config.json's keys) cannot take the codec's codes; None when it can. Cheap: it
    needs no weights, so it runs before any audio is encoded."""
    expected = (geometry.num_codebooks, geometry.model_codebook_size, geometry.stream_bos, geometry.stream_eos)
    have = tuple(model_config.get(k) for k in MODEL_GEOMETRY_KEYS)
    if have == expected:
        return None
    return (
        f"model has (num_codebooks, codebook_size, stream_bos, stream_eos) = {have} but the codec gives {expected} "
        f"({geometry.num_codebooks} codebooks of {geometry.codec_codebook_size} codes + BOS/EOS)"
    )


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
