"""The Whisper tower pools before the encoder's final layer norm, as the original Higgs Audio tower does."""

from __future__ import annotations

import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from data_pipeline.layout.whisper_features import WhisperLogMel
from ds_train.model.modeling import WhisperTower, feature_digests
from ds_train.model.presets import whisper_config
from tests.helpers import tiny_model_and_batch


def _pool(hidden: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool1d(hidden.transpose(1, 2), 2, 2).transpose(1, 2)


def test_pooling_sits_before_the_final_layer_norm() -> None:
    torch.manual_seed(0)
    tower = WhisperTower(WhisperEncoder(whisper_config("tiny")), 32).eval()
    with torch.no_grad():  # the norm's affine part away from identity, so the two orders differ clearly
        tower.encoder.layer_norm.weight.normal_()
        tower.encoder.layer_norm.bias.normal_()
    captured = {}
    tower.encoder.layers[-1].register_forward_hook(
        lambda _m, _i, out: captured.update(h=out[0] if isinstance(out, tuple) else out)
    )
    features = torch.randn(2, 128, 3000)
    with torch.no_grad():
        out = tower(features)
        norm, proj = tower.encoder.layer_norm, tower.projector
        last = captured["h"]  # [2, 1500, d]
        original_order = proj(
            torch.nn.functional.layer_norm(_pool(last), norm.normalized_shape, norm.weight, norm.bias)
        )
        norm_then_pool = proj(
            _pool(torch.nn.functional.layer_norm(last, norm.normalized_shape, norm.weight, norm.bias))
        )
    assert out.shape == (2, 750, 32)
    torch.testing.assert_close(out, original_order)
    assert not torch.allclose(out, norm_then_pool, atol=1e-3)
    assert set(tower.encoder.state_dict()) == set(WhisperEncoder(whisper_config("tiny")).state_dict())  # names kept


def test_an_encoder_cannot_join_two_towers() -> None:
    encoder = WhisperEncoder(whisper_config("tiny"))
    WhisperTower(encoder, 32)
    with pytest.raises(ValueError, match="pool twice"):
        WhisperTower(encoder, 32)


def test_remembered_whisper_chunks_give_the_same_embeddings_with_one_tower_pass_each() -> None:
    """`remember_whisper` (evaluation): the second pass over the same references runs no tower forward and places
    the same embeddings; a changed reference is computed afresh; outside the block nothing is kept."""
    model, batch, _ = tiny_model_and_batch(whisper=True)
    model.eval()
    passes: list[int] = []
    model.whisper.register_forward_hook(lambda _m, args, _out: passes.append(args[0].shape[0]))
    ids, features, counts = batch["input_ids"], batch["whisper_input_features"], batch["whisper_token_counts"]
    with torch.no_grad():
        _, plain = model.audio_in_embeddings(ids, features, counts)
        with model.remember_whisper():
            _, first = model.audio_in_embeddings(ids, features, counts)
            _, again = model.audio_in_embeddings(ids, features, counts)
            changed = features.clone()
            changed[1] += 0.5
            _, other = model.audio_in_embeddings(ids, changed, counts)
        _, after = model.audio_in_embeddings(ids, features, counts)
    chunks = features.shape[0]
    assert passes == [chunks, chunks, 1, chunks]  # plain, first (all new), again (none), changed (one), after
    assert torch.equal(plain, first) and torch.equal(first, again) and torch.equal(after, plain)
    start, end = int(counts[0]), int(counts[:2].sum())
    assert torch.equal(other[:start], plain[:start]) and not torch.equal(other[start:end], plain[start:end])
    assert torch.equal(other[end:], plain[end:])


def test_feature_digests_tell_every_difference_of_real_features() -> None:
    """The memo's keys hash each chunk only up to its constant tail; any change of a value, the tail's value or where
    the tail starts still gives another digest, and equal features give equal digests."""
    waves = torch.randn(3, 40000, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([40000, 24000, 24000])
    waves[1:, 24000:] = 0
    features, _ = WhisperLogMel()(waves, lengths)
    digests = feature_digests(features)
    assert len(set(digests)) == 3 and feature_digests(features.clone()) == digests
    tail_start = 24000 // 160 + 3  # a frame in the constant tail of chunks 1 and 2
    changed = [features.clone() for _ in range(4)]
    changed[0][1, 7, 10] += 1e-4  # inside the audio
    changed[1][1, :, -1] += 1e-4  # the tail's value (last frame)
    changed[2][1, 0, tail_start] += 1e-4  # one tail frame: the tail now starts later
    changed[3][1] = features[1].roll(1, dims=-1)  # the same values, shifted
    for other in changed:
        new = feature_digests(other)
        assert new[1] != digests[1] and new[0] == digests[0] and new[2] == digests[2]
    assert feature_digests(torch.zeros(1, 128, 3000)) != feature_digests(torch.zeros(1, 128, 2999))
