"""Whisper's log-mel front end in torch, on whatever device the waveforms are: the collator runs it on the CPU in the
DataLoader workers, or, with `whisper.features_on_device`, the trainer runs it on the GPU, which takes the loader's
largest per-sample cost (a 30 s STFT + mel projection, ~35 ms per reference on one CPU core) off the data path.

Matches transformers' `WhisperFeatureExtractor(feature_size=128)` (tested): zero-pad every chunk to 30 s, STFT with a
400-point Hann window and hop 160, power spectrum, 128 Slaney mel filters, log10, floor at (per-chunk max - 8), then
(x + 4) / 4.
"""

from __future__ import annotations

import torch

WHISPER_MEL_BINS = 128
WHISPER_SAMPLE_RATE = 16000
WHISPER_CHUNK_SAMPLES = 30 * WHISPER_SAMPLE_RATE  # Whisper reads 30 s chunks
HOP = 160
N_FFT = 400
FRAMES = WHISPER_CHUNK_SAMPLES // HOP  # 3000


class EmptyWhisperFeaturesError(ValueError):
    """Whisper conditioning is on but a batch would carry no reference features (the [0, 128, 3000] failure)."""


class WhisperLogMel:
    def __init__(self) -> None:
        from transformers import WhisperFeatureExtractor

        filters = WhisperFeatureExtractor(feature_size=WHISPER_MEL_BINS).mel_filters  # [201, 128]
        self._filters = torch.from_numpy(filters).float().T.contiguous()  # [128, 201]
        self._window = torch.hann_window(N_FFT)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self._filters.to(device), self._window.to(device))
        return self._on[device]

    @torch.no_grad()
    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves [N, S] (S <= 480000, zero beyond each length), lengths [N] valid samples ->
        (features [N, 128, 3000] float32, attention_mask [N, 3000] int64: 1 on frames that start inside the audio)."""
        if waves.dim() != 2 or waves.shape[0] == 0 or waves.shape[0] != lengths.numel():
            raise EmptyWhisperFeaturesError(
                f"Whisper front end got waveforms of shape {tuple(waves.shape)} and {lengths.numel()} lengths; "
                "expected [N > 0, samples] with one length per chunk"
            )
        if waves.shape[1] > WHISPER_CHUNK_SAMPLES:
            raise ValueError(f"Whisper chunks are at most {WHISPER_CHUNK_SAMPLES} samples (30 s), got {waves.shape[1]}")
        filters, window = self._constants(waves.device)
        # A frame starting more than half a window past the longest chunk sees only zero padding: its power is exactly
        # 0, so its log-mel is the floor log10(1e-10). Only the frames that can see audio are transformed (a 3 s
        # reference needs ~320 of the 3000; the STFT was the loader's largest per-sample cost), the rest are filled.
        longest = int(lengths.max())
        span = min(WHISPER_CHUNK_SAMPLES, -(-(longest + N_FFT) // HOP) * HOP)  # >= longest + half a window of zeros
        waves = waves[:, :span].float()
        waves = torch.nn.functional.pad(waves, (0, span - waves.shape[1]))
        computed = min(FRAMES, span // HOP)
        stft = torch.stft(waves, N_FFT, HOP, window=window, return_complex=True)
        power = (stft[..., :computed].abs() ** 2).contiguous()  # [N, 201, computed]
        head = (filters @ power).clamp(min=1e-10).log10()  # [N, 128, computed]
        peak = head.amax(dim=(1, 2), keepdim=True)  # [N, 1, 1]
        features = torch.empty(waves.shape[0], WHISPER_MEL_BINS, FRAMES, device=waves.device)
        if computed < FRAMES:  # the other frames hold the floor log10(1e-10), raised to the chunk's peak - 8 like all
            floor = torch.full((), 1e-10, device=waves.device).log10()
            peak = torch.maximum(peak, floor)
            features[..., computed:] = (torch.maximum(floor, peak - 8.0) + 4.0) / 4.0
        features[..., :computed] = (torch.maximum(head, peak - 8.0) + 4.0) / 4.0
        return features, feature_mask(lengths.to(waves.device))


def feature_mask(lengths: torch.Tensor) -> torch.Tensor:
    """lengths [N] valid samples -> Whisper attention_mask [N, 3000] int64: 1 on frames that start inside the audio."""
    frames = torch.arange(FRAMES, device=lengths.device)
    return (frames[None, :] * HOP < lengths[:, None]).long()


def empty_features(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features [0, 128, 3000] and mask [0, 3000] of a batch without reference chunks (for the checks to report)."""
    features = torch.zeros(0, WHISPER_MEL_BINS, FRAMES, device=device)
    return features, torch.zeros(0, FRAMES, dtype=torch.long, device=device)


def attach_features(batch: dict, log_mel: WhisperLogMel) -> dict:
    """Replace a batch's whisper_waveforms / whisper_lengths (collated with `whisper_on_device`) by
    whisper_input_features [N, 128, 3000] / whisper_attention_mask [N, 3000], computed where the waveforms are."""
    if "whisper_waveforms" in batch:
        waves, lengths = batch.pop("whisper_waveforms"), batch.pop("whisper_lengths")
        features, mask = log_mel(waves, lengths) if waves.shape[0] else empty_features(waves.device)
        batch["whisper_input_features"], batch["whisper_attention_mask"] = features, mask
    return batch
