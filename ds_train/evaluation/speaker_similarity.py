"""Speaker similarity for evaluation: cosine between x-vector speaker embeddings of two waveforms.

The speaker model is any transformers x-vector model in a local directory (e.g. a WavLM `WavLMForXVector` with its
feature extractor); nothing is downloaded. Similarity of generated speech to its reference says whether the voice
was cloned; the real target against the same reference gives the ceiling to compare with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data_pipeline.errors import InputError
from data_pipeline.ingest.audio import resample


class SpeakerEncoder:
    """waveform [S] at any rate -> speaker embedding [D] (L2-normalised)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "preprocessor_config.json").is_file():
            raise InputError(
                f"speaker model directory {path} needs config.json and preprocessor_config.json (a transformers "
                "x-vector model saved with save_pretrained, e.g. WavLMForXVector with its feature extractor)"
            )
        self.extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForAudioXVector.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self.sample_rate = int(self.extractor.sampling_rate)

    @torch.no_grad()
    def embed(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        wave = resample(wave.float().cpu(), sample_rate, self.sample_rate)
        inputs = self.extractor(wave.numpy(), sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        embedding = self.model(**inputs).embeddings[0].float()
        return torch.nn.functional.normalize(embedding, dim=0).cpu()

    def similarity(self, a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> float:
        """Cosine similarity in [-1, 1] between the speakers of two waveforms [S] at `sample_rate`."""
        return float(self.embed(a, sample_rate) @ self.embed(b, sample_rate))
