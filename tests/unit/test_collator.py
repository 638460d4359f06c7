"""Collator: padding, masks and Whisper features."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.layout.whisper_features import WhisperLogMel, attach_features
from data_pipeline.loading.collator import EmptyWhisperFeaturesError, VoiceCloningCollator
from data_pipeline.types import IGNORE_INDEX, AudioGeometry

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
    assert batch["whisper_token_counts"].tolist() == [25, 750, 25, 6]  # 3997 samples: 25 frames -> 13 -> 6
    assert int(batch["whisper_token_counts"].sum()) == int((batch["input_ids"] == builder.ids.audio_in).sum())
    assert batch["whisper_attention_mask"].sum(1).tolist() == [100, 3000, 100, 25]
    for i in range(4):
        assert feats[i].abs().sum() > 0


def test_whisper_off_has_no_features() -> None:
    builder, exs = _examples(whisper=False)
    batch = VoiceCloningCollator(builder.ids.pad, GEO, whisper=False)(exs)
    assert "whisper_input_features" not in batch
    assert not (batch["input_ids"] == builder.ids.audio_in).any()


def test_log_mel_matches_transformers_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(n, generator=g) * 0.1 for n in (20807, 480000, 16000, 3997)]
    chunks[2][8000:] = 0.0  # trailing silence inside the audio
    reference = WhisperFeatureExtractor(feature_size=128)(
        [c.numpy() for c in chunks], sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    lengths = torch.tensor([c.numel() for c in chunks])
    waves = torch.zeros(len(chunks), int(lengths.max()))
    for i, c in enumerate(chunks):
        waves[i, : c.numel()] = c
    features, mask = WhisperLogMel()(waves, lengths)
    assert features.shape == reference["input_features"].shape == (4, 128, 3000)
    assert torch.allclose(features, reference["input_features"], atol=1e-4)
    assert torch.equal(mask, reference["attention_mask"].long())
    # Short chunks alone transform only the frames that can see audio: the same features as next to a 30 s chunk,
    # where every frame is transformed.
    alone, alone_mask = WhisperLogMel()(waves[[0, 2, 3], :20807], lengths[[0, 2, 3]])
    assert torch.allclose(alone, features[[0, 2, 3]], atol=1e-6, rtol=0) and torch.equal(alone_mask, mask[[0, 2, 3]])
    assert torch.equal(alone[:, :, 200:], features[[0, 2, 3], :, 200:])  # the filled frames, exactly
    with pytest.raises(EmptyWhisperFeaturesError, match=r"\(0, 480000\)"):
        WhisperLogMel()(torch.zeros(0, 480000), torch.zeros(0))
    with pytest.raises(ValueError, match="at most 480000"):
        WhisperLogMel()(torch.zeros(1, 480001), torch.tensor([480001]))


def test_features_on_device_match_features_in_the_loader() -> None:
    builder, exs = _examples()
    in_loader = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    deferred = VoiceCloningCollator(builder.ids.pad, GEO, whisper_on_device=True)(exs)
    assert "whisper_input_features" not in deferred
    assert deferred["whisper_waveforms"].shape == (4, 480000) and deferred["whisper_lengths"].tolist() == [
        16000, 480000, 16000, 4000
    ]  # fmt: skip
    attached = attach_features(deferred, WhisperLogMel())
    assert "whisper_waveforms" not in attached
    for key in ("whisper_input_features", "whisper_attention_mask", "whisper_token_counts", "input_ids"):
        assert torch.equal(attached[key], in_loader[key]), key
