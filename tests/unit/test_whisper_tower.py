"""The Whisper tower pools before the encoder's final layer norm, as the original Higgs Audio tower does."""

from __future__ import annotations

import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ds_train.model import WhisperTower
from ds_train.presets import whisper_config


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
