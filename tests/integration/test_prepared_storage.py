"""How a prepared set stores the reference audio (issue 14): lossless FLAC, or nothing with `--whisper-pcm no` (the
codes are all a Whisper-off run reads); sets written before, with raw int16 PCM, still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.errors import InputError
from data_pipeline.layout import LayoutBuilder, LayoutOptions
from data_pipeline.manifest import read_manifest
from data_pipeline.prepare import PrepareConfig, prepare
from data_pipeline.prepared_dataset import PreparedDataset
from data_pipeline.shards import SHARD_SCHEMA, ShardReader, row_from_table, shard_name
from data_pipeline.text_tokens import build_tiny_tokenizer
from data_pipeline.types import AudioGeometry
from ds_train.trainer import Trainer
from tests.helpers import make_config


def _layout(root: Path, whisper: bool) -> LayoutBuilder:
    meta = json.loads((root / "dataset.json").read_text())
    geometry = AudioGeometry(meta["num_codebooks"], meta["codebook_size"])
    return LayoutBuilder(build_tiny_tokenizer(), geometry, LayoutOptions(whisper=whisper))


def test_flac_keeps_every_sample_of_the_int16_reference(prepared_corpus: Path, codec) -> None:
    from data_pipeline.encode_rows import encode_rows
    from data_pipeline.validation import Limits

    meta = json.loads((prepared_corpus / "dataset.json").read_text())
    rows, _ = read_manifest(meta["manifest"])
    encoded, _ = encode_rows(rows[:3], codec, Limits(), meta["manifest"])
    stored = [ShardReader(prepared_corpus / shard_name(0)).row(i) for i in range(3)]
    for fresh, kept in zip(encoded, stored, strict=True):
        quantised = (fresh.ref_pcm16k.clamp(-1, 1) * 32767).round() / 32767
        assert kept.ref_pcm16k.shape == fresh.ref_pcm16k.shape
        assert torch.equal(kept.ref_pcm16k, quantised.float())  # lossless: the int16 samples, every one
    table = pq.read_table(prepared_corpus / shard_name(0), columns=["ref_pcm16k", "ref_samples16k"])
    flac_bytes = sum(len(b) for b in table.column("ref_pcm16k").to_pylist())
    assert flac_bytes < 0.7 * 2 * sum(table.column("ref_samples16k").to_pylist())  # smaller than raw int16


def test_no_pcm_shrinks_the_set_and_whisper_runs_are_refused_by_name(
    assets, prepared_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no_pcm"
    cfg = PrepareConfig(str(assets.manifest), "dac", str(assets.codec_file), str(out), 12, whisper_pcm="no")
    summary = prepare(cfg, show_progress=False)
    with_pcm = json.loads((prepared_corpus / "summary.json").read_text())
    assert summary["examples"] == with_pcm["examples"] == 24
    assert summary["shard_bytes"] < with_pcm["shard_bytes"] / 3
    assert summary["mb_per_target_hour"] < with_pcm["mb_per_target_hour"] / 3
    with pytest.raises(InputError, match="--whisper-pcm no.*whisper.enabled=true"):
        PreparedDataset(out, _layout(out, whisper=True))
    dataset = PreparedDataset(out, _layout(out, whisper=False))
    assert dataset.lengths == PreparedDataset(prepared_corpus, _layout(prepared_corpus, whisper=False)).lengths
    example = dataset[0]
    assert not example.whisper_chunks and example.audio_frames.numel() > 0
    trainer = Trainer(make_config(assets, tmp_path / "run", f"data.prepared={out}", "whisper.enabled=false",
                                  "train.max_steps=1", "train.tensorboard=false"))  # fmt: skip
    assert trainer.fit().final_step == 1


def test_sets_written_with_raw_int16_pcm_still_load(prepared_corpus: Path, tmp_path: Path) -> None:
    """A shard of the format before FLAC: raw int16 bytes and no ref_pcm_format column."""
    new = pq.read_table(prepared_corpus / shard_name(0))
    old_root = tmp_path / "old"
    old_root.mkdir()
    pcm = [row_from_table(new, i).ref_pcm16k for i in range(new.num_rows)]
    raw = [(p * 32767).round().to(torch.int16).numpy().tobytes() for p in pcm]
    columns = {name: new.column(name) for name in SHARD_SCHEMA.names if name != "ref_pcm_format"}
    columns["ref_pcm16k"] = pa.array(raw, pa.binary())
    pq.write_table(pa.table(columns), old_root / shard_name(0))
    for i in range(new.num_rows):
        old = ShardReader(old_root / shard_name(0)).row(i)
        assert torch.equal(old.ref_pcm16k, pcm[i]) and old.ref_pcm16k.dtype == torch.float32
    assert np.allclose(pcm[0].numpy(), row_from_table(new, 0).ref_pcm16k.numpy())
