"""Intelligibility for evaluation: transcribe speech with a local Whisper ASR model and score it against the text it
should say, as word error rate (character error rate for languages written without spaces).

Normalisation follows Seed-TTS-eval's scoring: punctuation is removed (apostrophes kept), whitespace collapsed, text
lower-cased; for Chinese/Japanese text (any CJK character in the reference) the error rate is over characters with
spaces removed. The ASR model is a transformers Whisper checkpoint in a local directory; nothing is downloaded.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import Path

import torch

from data_pipeline.errors import InputError
from data_pipeline.ingest.audio import resample

_PUNCTUATION = set(string.punctuation) - {"'"}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def normalize(text: str) -> str:
    """Seed-TTS-eval style: punctuation (ASCII and Unicode, not apostrophes) removed, lower case, single spaces."""
    kept = "".join(
        " " if ch in _PUNCTUATION or (unicodedata.category(ch).startswith("P") and ch != "'") else ch for ch in text
    )
    return " ".join(kept.lower().split())


def _edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """-> (edit errors, reference length) in words, or in characters for CJK references."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if _CJK.search(ref):
        ref_units, hyp_units = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
    else:
        ref_units, hyp_units = ref.split(), hyp.split()
    return _edit_distance(ref_units, hyp_units), len(ref_units)


def error_rate(reference: str, hypothesis: str) -> float:
    errors, length = error_counts(reference, hypothesis)
    return errors / max(length, 1)


class Transcriber:
    """waveform [S] at any rate -> text, with a local Whisper (WhisperForConditionalGeneration + its processor)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", language: str | None = None) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = Path(path)
        processor_files = ("preprocessor_config.json", "processor_config.json")
        if not (path / "config.json").is_file() or not any((path / f).is_file() for f in processor_files):
            raise InputError(
                f"ASR model directory {path} needs config.json and {' or '.join(processor_files)}: "
                "a transformers Whisper checkpoint with its processor, saved with save_pretrained"
            )
        self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
        model = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.language = language
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)

    @torch.no_grad()
    def transcribe(self, wave: torch.Tensor, sample_rate: int, max_new_tokens: int = 128) -> str:
        if wave.numel() == 0:
            return ""
        audio = resample(wave.float().cpu(), sample_rate, self.sample_rate)
        features = self.processor(audio.numpy(), sampling_rate=self.sample_rate, return_tensors="pt").input_features
        options = {"language": self.language, "task": "transcribe"} if self.language else {}
        budget = min(max_new_tokens, self.model.config.max_target_positions - 8)  # room for the start tokens
        ids = self.model.generate(features.to(self.device), max_new_tokens=budget, **options)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
