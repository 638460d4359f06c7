"""The Whisper tower pools before the encoder's final layer norm, as the original Higgs Audio tower does."""

from __future__ import annotations

import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ds_train.model import WhisperTower
from ds_train.presets import whisper_config
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
