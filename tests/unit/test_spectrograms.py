"""The spectrogram image TensorBoard shows next to logged audio: panels in order, one colour scale, labelled."""

from __future__ import annotations

import math

import numpy as np
import torch

from ds_train.evaluation.spectrograms import FRAMES_PER_SECOND, GAP, TITLE, spectrogram_image

SAMPLE_RATE = 24000


def _tone(seconds: float, amplitude: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return amplitude * torch.sin(2 * math.pi * 440 * t)


def _panel(image: np.ndarray, left: int, width: int) -> np.ndarray:
    return image[TITLE + 2 : TITLE + 150, left + 1 : left + width - 1].astype(float)


def test_panels_side_by_side_on_one_colour_scale_with_labels() -> None:
    waves = {"reference": _tone(2.0, 0.5), "generated": torch.zeros(0), "quiet_target": _tone(1.0, 0.005)}
    image = spectrogram_image(waves, SAMPLE_RATE)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    loud_width, quiet_width = 2 * FRAMES_PER_SECOND + 1, FRAMES_PER_SECOND + 1  # centred frames: one more
    loud = _panel(image, GAP, loud_width)
    quiet = _panel(image, GAP + loud_width + GAP, quiet_width)
    # the empty waveform gets no panel; each panel is as wide as its audio is long
    assert not (image[TITLE + 10, GAP + loud_width + GAP + 2] == 255).all()  # the quiet panel follows the loud one
    assert (image[TITLE + 10, GAP + loud_width : GAP + loud_width + GAP] == 255).all()  # with a white gap between
    # one scale for all panels: the same tone 40 dB quieter is drawn darker (its brightest pixel included)
    assert quiet.sum(-1).max() < loud.sum(-1).max() - 150 and quiet.mean() < loud.mean()
    # titles are drawn above the panels (dark pixels in the title band), a colour bar to the right
    assert (image[:TITLE, GAP : GAP + 60] < 128).any()
    right = GAP + loud_width + GAP + quiet_width + GAP
    assert image[TITLE + 5, right + 2].tolist() != image[TITLE + 140, right + 2].tolist()  # bar: top != bottom
    assert image.shape[1] > right


def test_no_audio_at_all_still_gives_an_image() -> None:
    image = spectrogram_image({"generated": torch.zeros(0)}, SAMPLE_RATE)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
