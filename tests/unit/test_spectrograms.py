"""The spectrogram image TensorBoard shows next to logged audio: one row per role, stacked on one time and colour
scale, with time and frequency axes and a dB bar, at a readable size."""

from __future__ import annotations

import math

import numpy as np
import torch

from ds_train.evaluation import spectrograms as sp
from ds_train.evaluation.spectrograms import LEFT, PLOT_WIDTH, ROW_HEIGHT, TITLE, spectrogram_image, time_step

SAMPLE_RATE = 24000


def _tone(seconds: float, amplitude: float, hz: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return amplitude * torch.sin(2 * math.pi * hz * t)


def _row(image: np.ndarray, k: int) -> np.ndarray:
    """Pixels of row k's panel area [ROW_HEIGHT, PLOT_WIDTH, 3]."""
    top = TITLE + k * (sp.LABEL + ROW_HEIGHT + sp.GAP) + sp.LABEL
    return image[top : top + ROW_HEIGHT, LEFT : LEFT + PLOT_WIDTH].astype(float)


def test_rows_stacked_on_one_time_and_colour_scale_with_axes() -> None:
    waves = {"reference": _tone(2.0, 0.5), "generated": torch.zeros(0), "quiet_target": _tone(1.0, 0.005)}
    image = spectrogram_image(waves, SAMPLE_RATE, "spk0_00 (speaker spk0)")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # readable in a TensorBoard card: wide enough, taller than a strip (the old one was 2534 x 194)
    assert 800 <= image.shape[1] <= 1000 and image.shape[0] >= 3 * ROW_HEIGHT
    loud, empty, quiet = _row(image, 0), _row(image, 1), _row(image, 2)
    # one time scale: the 2 s clip fills the row, the 1 s clip half of it (white after it)
    assert not (loud[:, PLOT_WIDTH - 5] == 255).all()
    assert (quiet[:, PLOT_WIDTH // 2 + 10 :] >= 150).all() and not (quiet[:, : PLOT_WIDTH // 2 - 10] >= 150).all()
    # an empty waveform gets a grey row, not a missing one
    assert (empty[10:-10, 200:300] == 236).all()
    # one colour scale: the same tone 40 dB quieter is drawn darker
    assert quiet[:, : PLOT_WIDTH // 2 - 10].sum(-1).max() < loud.sum(-1).max() - 150
    # the 440 Hz tone is drawn where the frequency axis puts 440 Hz (low frequencies at the bottom)
    brightest = int(loud[:, PLOT_WIDTH // 2].sum(-1).argmax())
    assert abs((ROW_HEIGHT - 1 - brightest) / (ROW_HEIGHT - 1) - sp._mel_height(440, SAMPLE_RATE)) < 0.06
    # labels: the title, the frequency ticks left of the rows, the time ticks below, the dB bar on the right
    assert (image[:TITLE, LEFT : LEFT + 100] < 128).any()
    assert (image[TITLE + sp.LABEL : TITLE + sp.LABEL + ROW_HEIGHT, : LEFT - 6] < 128).any()
    assert (image[-30:, LEFT : LEFT + PLOT_WIDTH] < 128).any()
    bar = image[TITLE + sp.LABEL + 5 : -40, LEFT + PLOT_WIDTH + 12]
    assert bar[0].tolist() != bar[-1].tolist()


def test_no_audio_at_all_still_gives_an_image() -> None:
    image = spectrogram_image({"generated": torch.zeros(0)}, SAMPLE_RATE)
    assert image.ndim == 3 and image.shape[0] > ROW_HEIGHT and image.shape[1] > PLOT_WIDTH


def test_time_ticks_stay_few() -> None:
    assert time_step(2.3) == 0.25 and time_step(30.0) == 5.0 and time_step(0.5) == 0.1
