"""Speaker similarity for evaluation: cosine between speaker embeddings of two waveforms.

Two encoders, nothing downloaded: by default resemblyzer's GE2E encoder (`GE2EEncoder`; its weights ship inside the
package, so every run and the demo get a similarity), or, with `monitor.speaker_model`, any transformers x-vector
model in a local directory (`SpeakerEncoder`, e.g. a WavLM `WavLMForXVector` with its feature extractor), for numbers
comparable with published ones. Similarity of generated speech to its reference says whether the voice was cloned;
the real target against the same reference gives the ceiling to compare with.
"""

from __future__ import annotations

import logging
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from data_pipeline.errors import InputError
from data_pipeline.ingest.audio import resample

log = logging.getLogger("ds_train")
GE2E_RATE = 16000
MIN_VOICED_SECONDS = 0.2  # below this much speech after silence trimming, the untrimmed audio is embedded


class SpeakerEncoder:
    """A local transformers x-vector model: waveform [S] at any rate -> speaker embedding [D] (L2-normalised)."""

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
        self.name = f"x-vector model {path}"

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


class GE2EEncoder:
    """resemblyzer's GE2E speaker encoder (weights inside the package, loaded offline in ~0.1 s): waveform [S] at any
    rate -> speaker embedding [256] (L2-normalised), after resemblyzer's own volume normalisation and silence
    trimming."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        with warnings.catch_warnings():  # its scipy import is deprecated: nothing the user can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder

        self.model = VoiceEncoder(torch.device(device), verbose=False)
        self.name = f"resemblyzer {metadata.version('resemblyzer')} GE2E (offline default)"

    @torch.no_grad()
    def embed(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        from resemblyzer.audio import normalize_volume, trim_long_silences
        from resemblyzer.hparams import audio_norm_target_dBFS

        pcm = resample(wave.float().cpu(), sample_rate, GE2E_RATE).numpy().astype(np.float32)
        if np.abs(pcm).max(initial=0.0) > 0:  # digital silence has no level to normalise (resemblyzer makes it NaN)
            pcm = normalize_volume(pcm, audio_norm_target_dBFS, increase_only=True)
        voiced = trim_long_silences(pcm)
        embedding = self.model.embed_utterance(voiced if voiced.size >= MIN_VOICED_SECONDS * GE2E_RATE else pcm)
        return torch.nn.functional.normalize(torch.from_numpy(embedding).float(), dim=0)

    def similarity(self, a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> float:
        return float(self.embed(a, sample_rate) @ self.embed(b, sample_rate))


def speaker_encoder(path: str | Path | None, device: torch.device | str = "cpu") -> SpeakerEncoder | GE2EEncoder | None:
    """The x-vector model at `path`, or without one the GE2E default; None (said once in the log) when resemblyzer is
    not installed."""
    if path:
        return SpeakerEncoder(path, device)
    try:
        return GE2EEncoder(device)
    except ImportError as err:
        log.warning("speaker similarity is off: the default encoder needs resemblyzer (pip install -r "
                    "requirements.txt), or set monitor.speaker_model to a local x-vector model (%s)", err)  # fmt: skip
        return None
