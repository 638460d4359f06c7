"""An in-memory voice-cloning dataset: reads a manifest, encodes every audio file once with the codec, and tokenizes
each row into a `VoiceCloningExample`. Rows that fail are rejected with their reason, never silently dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from data_pipeline.audio import AudioError, load_mono, resample
from data_pipeline.codecs import Codec
from data_pipeline.layout import WHISPER_SAMPLE_RATE, LayoutBuilder, VoiceCloningExample
from data_pipeline.manifest import Reject, read_manifest

log = logging.getLogger(__name__)


class EncodedVoiceCloningDataset(Dataset):
    """examples[i] is a ready `VoiceCloningExample`; `rejects` lists the manifest rows that could not be used."""

    def __init__(
        self,
        manifest: str | Path,
        codec: Codec,
        layout: LayoutBuilder,
        encode_batch_size: int = 8,
        show_progress: bool = True,
    ) -> None:
        rows, self.rejects = read_manifest(manifest)
        files = sorted({p for r in rows for p in (r.ref_audio, r.audio)})
        codes: dict[Path, torch.Tensor] = {}
        waves_16k: dict[Path, torch.Tensor] = {}
        failed: dict[Path, str] = {}
        bar = tqdm(total=len(files), desc="encoding audio", unit="file", disable=not show_progress)
        for start in range(0, len(files), encode_batch_size):
            batch_paths, batch_waves = [], []
            for path in files[start : start + encode_batch_size]:
                try:
                    wave, sr = load_mono(path)
                except AudioError as err:
                    failed[path] = str(err)
                    continue
                batch_paths.append(path)
                batch_waves.append(resample(wave, sr, codec.sample_rate))
                waves_16k[path] = resample(wave, sr, WHISPER_SAMPLE_RATE)
            for path, c in zip(batch_paths, codec.encode(batch_waves, codec.sample_rate), strict=True):
                codes[path] = c
            bar.update(len(files[start : start + encode_batch_size]))
        bar.close()

        self.examples: list[VoiceCloningExample] = []
        for row in rows:
            bad = [failed[p] for p in (row.ref_audio, row.audio) if p in failed]
            if bad:
                self.rejects.append(Reject(str(manifest), row.line, row.id, "; ".join(bad)))
                continue
            try:
                self.examples.append(
                    layout.build(
                        row.id,
                        row.ref_text,
                        codes[row.ref_audio],
                        row.text,
                        codes[row.audio],
                        ref_wave_16k=waves_16k[row.ref_audio],
                        scene=row.scene,
                    )
                )
            except ValueError as err:
                self.rejects.append(Reject(str(manifest), row.line, row.id, str(err)))
        for rej in self.rejects:
            log.warning("rejected %s line %d (id %s): %s", rej.source, rej.line, rej.id, rej.reason)
        if not self.examples:
            raise ValueError(f"no usable rows in {manifest}: {len(self.rejects)} rejected")

    @property
    def lengths(self) -> list[int]:
        """Token count of each example (for token-budget batching)."""
        return [ex.num_tokens for ex in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> VoiceCloningExample:
        return self.examples[index]
