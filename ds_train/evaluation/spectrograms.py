"""Mel spectrograms of several waveforms as one labelled RGB image for TensorBoard: one row per role (reference,
target, teacher-forced, generated), stacked on one time scale and one colour scale, with time (s) and frequency (Hz)
axes and a dB colour bar, at a size TensorBoard's image card shows readably (about 880 px wide, 15-18 px text).

Drawn directly into pixels (a colour table lookup, a resize and a few text labels) rather than through a matplotlib
figure: rendering the figure took a quarter of a second per evaluation on the demo, several times the rest of its
logging.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FRAMES_PER_SECOND = 100  # one spectrogram column per 10 ms
N_MELS = 80
DYNAMIC_RANGE_DB = 80.0  # colours span the loudest bin of all panels down to 80 dB below it
PLOT_WIDTH = 720  # pixels of the longest clip's row
ROW_HEIGHT = 120  # pixels per panel
LEFT, RIGHT, TITLE, LABEL, AXIS, GAP = 70, 92, 26, 25, 40, 6  # margins, the title band, each row's label band, gap
BAR_WIDTH = 14
TIME_STEPS = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)  # seconds between time ticks
FREQ_TICKS = (0, 1000, 2000, 4000, 8000, 16000)  # Hz marked on each row's frequency axis
INK, FAINT, BLANK = (0, 0, 0), (150, 150, 150), (236, 236, 236)


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = N_MELS) -> torch.Tensor:
    """waveform [S] -> log-mel spectrogram [n_mels, frames] in dB (floored at -100 dB), 100 frames per second."""
    from torchaudio.transforms import MelSpectrogram

    hop = max(1, sample_rate // FRAMES_PER_SECOND)
    mel = MelSpectrogram(sample_rate, n_fft=4 * hop, hop_length=hop, n_mels=n_mels)(wave.float().cpu())
    return 10 * mel.clamp(min=1e-10).log10()


def _mel_height(hz: float, sample_rate: int) -> float:
    """Where `hz` sits on the (HTK) mel axis of `log_mel`, as a fraction of its height from the bottom."""
    return math.log10(1 + hz / 700) / math.log10(1 + sample_rate / 2 / 700)


def time_step(seconds: float, most: int = 10) -> float:
    """The smallest of `TIME_STEPS` that puts at most `most` ticks on `seconds`."""
    return next((s for s in TIME_STEPS if seconds / s <= most), TIME_STEPS[-1])


def spectrogram_image(waves: dict[str, torch.Tensor], sample_rate: int, title: str = "") -> np.ndarray:
    """One row per waveform [S] in the dict's order (labelled with its name, underscores as spaces, and its length),
    left-aligned on one time scale (the longest fills `PLOT_WIDTH`), low frequencies at the bottom, on one colour
    scale (magma: the loudest bin of all rows down to `DYNAMIC_RANGE_DB` below it) shown by the bar on the right; an
    empty waveform gets a grey row marked "no audio". -> RGB image [height, width, 3] uint8 (TensorBoard
    `add_image(..., dataformats="HWC")`)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    mels = {name: log_mel(w, sample_rate) if w.numel() > 0 else None for name, w in waves.items()}
    present = [m for m in mels.values() if m is not None]
    top = max((float(m.max()) for m in present), default=0.0)
    seconds = max([m.shape[1] / FRAMES_PER_SECOND for m in present] + [0.5])
    per_second = PLOT_WIDTH / seconds
    rows = max(1, len(mels))
    height = TITLE + rows * (LABEL + ROW_HEIGHT + GAP) + AXIS
    image = Image.new("RGB", (LEFT + PLOT_WIDTH + RIGHT, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=18), ImageFont.load_default(size=15)  # readable in a shrunk card
    colours = colormaps["magma"]

    def rgb(values: np.ndarray) -> np.ndarray:
        """values [rows, columns] in dB -> colours [rows, columns, 3], row 0 drawn at the bottom."""
        scaled = np.clip((values - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
        return colours(scaled[::-1], bytes=True)[..., :3]

    draw.text((LEFT, 3), title, fill=INK, font=font)
    bottom = TITLE + rows * (LABEL + ROW_HEIGHT + GAP)  # the time axis under the last row, its grid behind them
    step = time_step(seconds)
    for k in range(int(seconds / step + 1e-9) + 1):
        x = LEFT + round(k * step * per_second)
        draw.line((x, TITLE + LABEL, x, bottom - GAP + 4), fill=FAINT if k else INK)
        draw.text((x, bottom - GAP + 5), f"{k * step:g}", fill=INK, font=small, anchor="mt")
    draw.text((LEFT + PLOT_WIDTH // 2, height - 3), "time (s)", fill=INK, font=small, anchor="mb")
    y = TITLE
    for name, mel in mels.items():
        label = name.replace("_", " ")
        panel_top = y + LABEL
        if mel is None:
            draw.rectangle((LEFT, panel_top, LEFT + PLOT_WIDTH - 1, panel_top + ROW_HEIGHT - 1), fill=BLANK)
            draw.text((LEFT + 8, panel_top + ROW_HEIGHT // 2 - 9), "no audio", fill=INK, font=font)
            label += ": no audio"
        else:
            width = max(1, round(mel.shape[1] / FRAMES_PER_SECOND * per_second))
            panel = Image.fromarray(rgb(mel.numpy())).resize((width, ROW_HEIGHT), Image.Resampling.BILINEAR)
            image.paste(panel, (LEFT, panel_top))
            label += f": {mel.shape[1] / FRAMES_PER_SECOND:.2f} s"
        draw.text((LEFT, y + 1), label, fill=INK, font=font)
        for hz in FREQ_TICKS:
            if hz > sample_rate / 2:
                break
            ty = panel_top + ROW_HEIGHT - 1 - round(_mel_height(hz, sample_rate) * (ROW_HEIGHT - 1))
            draw.line((LEFT - 4, ty, LEFT - 1, ty), fill=INK)
            draw.text((LEFT - 6, ty), f"{hz / 1000:g}k" if hz >= 1000 else f"{hz}", fill=INK, font=small, anchor="rm")
        y = panel_top + ROW_HEIGHT + GAP
    draw.text((4, TITLE + 1), "Hz", fill=INK, font=font)

    bar_left, bar_top, bar_bottom = LEFT + PLOT_WIDTH + 10, TITLE + LABEL, y - GAP
    levels = np.linspace(top - DYNAMIC_RANGE_DB, top, max(2, bar_bottom - bar_top))[:, None].repeat(BAR_WIDTH, 1)
    image.paste(Image.fromarray(np.ascontiguousarray(rgb(levels))), (bar_left, bar_top))
    for fraction in (0.0, 0.5, 1.0):
        ty = bar_bottom - round(fraction * (bar_bottom - bar_top - 1)) - 1
        draw.text((bar_left + BAR_WIDTH + 3, ty), f"{top - DYNAMIC_RANGE_DB * (1 - fraction):.0f} dB", fill=INK,
                  font=small, anchor="lm")  # fmt: skip
    return np.asarray(image)
