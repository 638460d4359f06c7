"""Collator: padding, masks and Whisper features."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.collator import EmptyWhisperFeaturesError, VoiceCloningCollator
from data_pipeline.layout import IGNORE_INDEX, AudioGeometry, LayoutBuilder, LayoutOptions
from data_pipeline.text_tokens import build_tiny_tokenizer

GEO = AudioGeometry(num_codebooks=4, codec_codebook_size=256)


def _examples(whisper: bool = True):
    builder = LayoutBuilder(build_tiny_tokenizer(), GEO, LayoutOptions(whisper=whisper))
    g = torch.Generator().manual_seed(0)
    specs = [(3, 5, 16000), (6, 2, 16000 * 31), (4, 8, 4000)]
    exs = [
        builder.build(
            f"s{i}",
            "ref text",
            torch.randint(0, 256, (4, r), generator=g),
            "target text",
            torch.randint(0, 256, (4, t), generator=g),
            ref_wave_16k=torch.randn(n) * 0.1,
        )
        for i, (r, t, n) in enumerate(specs)
    ]
    return builder, exs


def test_padding_and_masks() -> None:
    builder, exs = _examples()
    batch = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    lengths = [ex.num_tokens for ex in exs]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    frames = [ex.audio_frames.shape[0] for ex in exs]
    assert batch["audio_input_ids"].shape == (3, max(frames), 4)
    assert batch["audio_input_ids_mask"].sum(1).tolist() == frames
    # the mask selects exactly as many frames as there are placeholders in the padded token rows
    placeholders = (batch["input_ids"] == builder.ids.audio_out) | (batch["input_ids"] == builder.ids.audio_delay)
    assert int(placeholders.sum()) == int(batch["audio_input_ids_mask"].sum())
    assert (batch["audio_labels"][~batch["audio_input_ids_mask"]] == IGNORE_INDEX).all()
    assert batch["sample_ids"] == ["s0", "s1", "s2"]


def test_whisper_features_for_every_reference_chunk() -> None:
    builder, exs = _examples()
    batch = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    feats = batch["whisper_input_features"]
    # sample 1 has a 31 s reference: two chunks
    assert feats.shape == (4, 128, 3000)
    assert batch["whisper_chunk_sample"].tolist() == [0, 1, 1, 2]
    assert batch["whisper_token_counts"].tolist() == [25, 750, 25, 7]
    assert int(batch["whisper_token_counts"].sum()) == int((batch["input_ids"] == builder.ids.audio_in).sum())
    assert batch["whisper_attention_mask"].sum(1).tolist() == [100, 3000, 100, 25]
    for i in range(4):
        assert feats[i].abs().sum() > 0


def test_missing_reference_never_gives_empty_features() -> None:
    builder, exs = _examples()
    exs[1].whisper_chunks = []
    with pytest.raises(EmptyWhisperFeaturesError, match="s1"):
        VoiceCloningCollator(builder.ids.pad, GEO)(exs)


def test_whisper_off_has_no_features() -> None:
    builder, exs = _examples(whisper=False)
    batch = VoiceCloningCollator(builder.ids.pad, GEO, whisper=False)(exs)
    assert "whisper_input_features" not in batch
    assert not (batch["input_ids"] == builder.ids.audio_in).any()
