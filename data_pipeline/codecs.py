"""One codec interface over the audio tokenizers: encode(waveform) -> codes [C, T], decode(codes) -> waveform.

Backends: `dac` (descript-audio-codec). Weights always come from a local file; `tiny_dac` builds a small random-init
model with a 25 frames/s geometry for tests and the demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from data_pipeline.audio import resample


class Codec(Protocol):
    sample_rate: int
    num_codebooks: int
    codebook_size: int
    frame_rate: float

    def encode(self, waves: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """waves: list of [S_i] mono waveforms at `sample_rate` -> list of codes [C, T_i] (int64)."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [C, T] -> waveform [S] at `self.sample_rate`."""
        ...


class DacCodec:
    """descript-audio-codec backend. Batched encode pads to the longest input and trims each result to its length."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.sample_rate = int(model.sample_rate)
        self.num_codebooks = int(model.n_codebooks)
        self.codebook_size = int(model.codebook_size)
        self.hop_length = int(model.hop_length)
        self.frame_rate = self.sample_rate / self.hop_length

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> DacCodec:
        """Load weights saved with `DAC.save(path)` (or the original DAC release file) from local disk."""
        import dac

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"DAC weights file {path} does not exist (weights are never downloaded)")
        return cls(dac.utils.load_model(load_path=str(path)), device)

    @torch.no_grad()
    def encode(self, waves: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        if not waves:
            return []
        waves = [resample(w.float(), sample_rate, self.sample_rate) for w in waves]
        lengths = [w.numel() for w in waves]
        longest = max(lengths)
        batch = torch.zeros(len(waves), 1, longest)
        for i, w in enumerate(waves):
            batch[i, 0, : w.numel()] = w
        batch = self.model.preprocess(batch.to(self.device), self.sample_rate)
        _, codes, *_ = self.model.encode(batch)
        return [codes[i, :, : max(1, -(-n // self.hop_length))].long().cpu() for i, n in enumerate(lengths)]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        latents = self.model.quantizer.from_codes(codes.unsqueeze(0).to(self.device))[0]
        return self.model.decode(latents)[0, 0].float().cpu()


def tiny_dac(seed: int = 0, num_codebooks: int = 4, codebook_size: int = 256) -> torch.nn.Module:
    """A ~0.3M-parameter random-init DAC at 24 kHz, hop 960 (25 frames/s, the Higgs codec's frame rate)."""
    import dac

    torch.manual_seed(seed)
    return dac.DAC(
        encoder_dim=8,
        encoder_rates=[4, 5, 6, 8],
        latent_dim=32,
        decoder_dim=32,
        decoder_rates=[8, 6, 5, 4],
        n_codebooks=num_codebooks,
        codebook_size=codebook_size,
        codebook_dim=8,
        sample_rate=24000,
    )


def load_codec(kind: str, path: str | Path, device: str | torch.device = "cpu") -> Codec:
    """Build the codec a run config names. `kind`: "dac"."""
    if kind == "dac":
        return DacCodec.from_file(path, device)
    raise ValueError(f"unknown codec {kind!r}; supported: 'dac' (the 'higgs' backend is tracked in the data issue)")
