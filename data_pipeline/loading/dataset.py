"""An in-memory voice-cloning dataset: reads a manifest, validates and encodes every audio file once (the same checks
and encoding as `data_pipeline.prepare`), and tokenizes each row into a `VoiceCloningExample`. Rows that fail are
rejected with their reason, never silently dropped."""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

from data_pipeline.codecs import Codec
from data_pipeline.errors import InputError
from data_pipeline.ingest.manifest import Reject, read_manifest
from data_pipeline.ingest.validation import Limits
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.loading.reference_swap import RowSizes
from data_pipeline.prepare.encode_rows import encode_rows
from data_pipeline.prepare.shards import EncodedRow
from data_pipeline.progress import Progress
from data_pipeline.types import VoiceCloningExample

log = logging.getLogger(__name__)


class EncodedVoiceCloningDataset(Dataset):
    """examples[i] is a ready `VoiceCloningExample` built from rows[i]; `rejects` lists the manifest rows that could
    not be used. The rows are kept for reference swapping (their waveforms are shared with the examples' chunks)."""

    def __init__(
        self,
        manifest: str | Path,
        codec: Codec,
        layout: LayoutBuilder,
        encode_batch_size: int | None = None,
        show_progress: bool = True,
        limits: Limits | None = None,
    ) -> None:
        rows, self.rejects = read_manifest(manifest)
        files = len({p for r in rows for p in (r.ref_audio, r.audio)})
        with Progress(files, "encoding audio", "file", show_progress) as bar:
            encoded, rejects = encode_rows(
                rows, codec, limits or Limits(), str(manifest), encode_batch_size, on_batch=bar.update
            )
        self.rejects += rejects
        self.examples: list[VoiceCloningExample] = []
        self.rows: list[EncodedRow] = []
        for row in encoded:
            try:
                self.examples.append(
                    layout.build(row.id, row.ref_text, row.ref_codes, row.text, row.target_codes,
                                 ref_wave_16k=row.ref_pcm16k, scene=row.scene)
                )  # fmt: skip
                self.rows.append(row)
            except ValueError as err:
                self.rejects.append(Reject(str(manifest), row.line, row.id, str(err)))
        self.rejects.sort(key=lambda r: r.line)
        for rej in self.rejects:
            log.warning("rejected %s line %d (id %s): %s", rej.source, rej.line, rej.id, rej.reason)
        if not self.examples:
            raise InputError(f"no usable rows in {manifest}: all {len(self.rejects)} rejected (reasons logged above)")

    @property
    def lengths(self) -> list[int]:
        """Token count of each example (for token-budget batching)."""
        return [ex.num_tokens for ex in self.examples]

    @property
    def speakers(self) -> list[str | None]:
        """Each example's manifest `speaker` (None where the row has none)."""
        return [row.speaker for row in self.rows]

    def row(self, i: int) -> EncodedRow:
        return self.rows[i]

    def row_sizes(self, i: int) -> RowSizes:
        return RowSizes.of_row(self.rows[i])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> VoiceCloningExample:
        return self.examples[index]
