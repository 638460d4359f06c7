"""Word/character error rates with Seed-TTS-eval's normalisation, and a local Whisper ASR model (tiny, random-init)
transcribing through the real transformers code."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ds_train.evaluation.intelligibility import Transcriber, error_counts, error_rate, normalize
from tests.helpers import tiny_asr_model


def test_normalisation_and_error_rates() -> None:
    assert normalize("Hello,  World! It's  “fine”.") == "hello world it's fine"
    assert error_rate("Hello, world!", "hello world") == 0.0
    assert math.isclose(error_rate("the cat sat", "the bat sat"), 1 / 3)
    assert error_counts("the cat sat down", "cat sat down now") == (2, 4)  # one deletion, one insertion
    assert error_rate("a b", "") == 1.0
    assert error_counts("你好，世界", "你好世") == (1, 4)  # CJK: characters, punctuation and spaces removed


def test_transcriber_runs_a_local_whisper(tmp_path: Path) -> None:
    path = tiny_asr_model(tmp_path / "asr")
    for language in (None, "en"):
        text = Transcriber(path, language=language).transcribe(torch.randn(24000) * 0.1, 24000, max_new_tokens=6)
        assert isinstance(text, str)
    asr = Transcriber(path)
    assert asr.transcribe(torch.zeros(0), 16000) == ""
