"""Mel spectrograms of several waveforms side by side as one labelled RGB image, for TensorBoard.

Drawn directly into pixels (a colour table lookup and a few text labels) rather than through a matplotlib figure:
rendering the figure took a quarter of a second per evaluation on the demo, several times the rest of its logging.
"""

from __future__ import annotations

import numpy as np
import torch

FRAMES_PER_SECOND = 100  # one spectrogram column per 10 ms
DYNAMIC_RANGE_DB = 80.0  # colours span the loudest bin of all panels down to 80 dB below it
BIN_HEIGHT = 2  # pixels per mel bin
TITLE, AXIS, GAP, SCALE_WIDTH = 18, 16, 12, 10  # pixel sizes of the title band, the seconds band, gaps, colour bar
MARGIN_RIGHT = 56  # room for the colour bar's dB labels


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = 80) -> torch.Tensor:
    """waveform [S] -> log-mel spectrogram [n_mels, frames] in dB (floored at -100 dB), 100 frames per second."""
    from torchaudio.transforms import MelSpectrogram

    hop = max(1, sample_rate // FRAMES_PER_SECOND)
    mel = MelSpectrogram(sample_rate, n_fft=4 * hop, hop_length=hop, n_mels=n_mels)(wave.float().cpu())
    return 10 * mel.clamp(min=1e-10).log10()


def spectrogram_image(waves: dict[str, torch.Tensor], sample_rate: int) -> np.ndarray:
    """The log-mel spectrogram of each non-empty waveform [S], side by side left to right in the dict's order, low
    frequencies at the bottom, on one colour scale (magma, the top `DYNAMIC_RANGE_DB` below the loudest bin), each
    titled with its name (underscores as spaces) and length in seconds, with a dB colour bar on the right.
    -> RGB image [height, width, 3] uint8 (TensorBoard `add_image(..., dataformats="HWC")`)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    mels = {name: log_mel(w, sample_rate) for name, w in waves.items() if w.numel() > 0}
    top = max((float(m.max()) for m in mels.values()), default=0.0)
    height = max((m.shape[0] for m in mels.values()), default=1) * BIN_HEIGHT
    widths = [max(1, m.shape[1]) for m in mels.values()]
    width = GAP + sum(w + GAP for w in widths) + SCALE_WIDTH + MARGIN_RIGHT
    canvas = np.full((TITLE + height + AXIS, width, 3), 255, dtype=np.uint8)
    colours = colormaps["magma"]

    def paint(values: np.ndarray, left: int) -> None:
        """values [rows, columns] in dB -> colours at (TITLE, left), row 0 at the bottom."""
        scaled = np.clip((values - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
        rgb = colours(scaled[::-1], bytes=True)[..., :3].repeat(BIN_HEIGHT, axis=0)
        canvas[TITLE : TITLE + rgb.shape[0], left : left + rgb.shape[1]] = rgb

    left = GAP
    lefts = []
    for mel in mels.values():
        paint(mel.numpy(), left)
        lefts.append(left)
        left += mel.shape[1] + GAP
    bar = np.linspace(top - DYNAMIC_RANGE_DB, top, height // BIN_HEIGHT)[:, None].repeat(SCALE_WIDTH, axis=1)
    paint(bar, left)

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    for (name, mel), x in zip(mels.items(), lefts, strict=True):
        draw.text((x, 2), name.replace("_", " "), fill=(0, 0, 0), font=font)
        draw.text((x, TITLE + height + 2), f"{mel.shape[1] / FRAMES_PER_SECOND:.2f} s", fill=(0, 0, 0), font=font)
    draw.text((left + SCALE_WIDTH + 3, TITLE - 4), f"{top:.0f} dB", fill=(0, 0, 0), font=font)
    draw.text((left + SCALE_WIDTH + 3, TITLE + height - 12), f"{top - DYNAMIC_RANGE_DB:.0f} dB", fill=(0, 0, 0),
              font=font)  # fmt: skip
    return np.asarray(image)
