"""Decode audio files to mono float waveforms and resample them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and the reason."""


def load_mono(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read wav/flac/ogg with soundfile -> (waveform [S] float32 in [-1, 1], sample rate). Multi-channel is averaged."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: zero-length audio")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not torch.isfinite(wave).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return wave, int(sr)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """[..., S] -> [..., S * new_sr / orig_sr] with torchaudio's windowed-sinc resampler."""
    if orig_sr == new_sr:
        return wave
    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"cannot resample from {orig_sr} Hz to {new_sr} Hz")
    return AF.resample(wave, orig_sr, new_sr)
