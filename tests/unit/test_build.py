"""Building models from local directories and presets; geometry and token checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import WhisperModel

from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.types import AudioGeometry
from ds_train.config import ConfigError, RunConfig
from ds_train.info import meta_model
from ds_train.model.build import build_model, build_tokenizer
from ds_train.model.flops import bf16_peak_for
from ds_train.model.modeling import load_whisper_encoder
from ds_train.model.parts import parameter_counts
from ds_train.model.presets import whisper_config

GEO = AudioGeometry(num_codebooks=4, codec_codebook_size=256)


def test_model_path_loads_offline_from_a_local_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.whisper.enabled = False
    tok = build_tiny_tokenizer()
    original = build_model(cfg, tok, GEO)
    original.llm.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    cfg.model.path = str(tmp_path)
    loaded_tok = build_tokenizer(cfg)
    loaded = build_model(cfg, loaded_tok, GEO)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_codec_and_model_geometry_must_match(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.whisper.enabled = False
    tok = build_tiny_tokenizer()
    build_model(cfg, tok, GEO).llm.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    cfg.model.path = str(tmp_path)
    with pytest.raises(ConfigError, match="codec gives"):
        build_model(cfg, tok, AudioGeometry(num_codebooks=8, codec_codebook_size=1024))


def test_whisper_tower_loads_encoder_weights_from_a_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    whisper = WhisperModel(whisper_config("tiny"))
    whisper.save_pretrained(str(tmp_path))
    encoder = load_whisper_encoder(tmp_path)
    for name, value in whisper.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
    cfg = RunConfig()
    cfg.whisper.path = str(tmp_path)
    cfg.whisper.trainable = False
    model = build_model(cfg, build_tiny_tokenizer(), GEO)
    assert torch.equal(model.whisper.encoder.conv1.weight, whisper.encoder.conv1.weight)
    assert not any(p.requires_grad for p in model.whisper.encoder.parameters())
    assert model.whisper.projector.weight.requires_grad


def test_text_head_is_optional() -> None:
    cfg = RunConfig()
    assert build_model(cfg, build_tiny_tokenizer(), GEO).llm.text_lm_head is None
    cfg.model.text_head = True
    assert build_model(cfg, build_tiny_tokenizer(), GEO).llm.text_lm_head is not None


def test_3b_preset_has_the_published_geometry_on_meta() -> None:
    model = meta_model("3b", whisper_preset="large-v3")
    cfg = model.llm.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        3072,
        28,
        24,
        8,
    )
    assert cfg.vocab_size == 128256 and cfg.num_codebooks == 8 and cfg.codebook_size == 1026
    assert all(p.device.type == "meta" for p in model.parameters())
    parts = parameter_counts(model.named_parameters())
    # "3.6B LLM + 2.2B audio adapter" in the published description (the untied text head makes the 3.6B)
    assert 2.0e9 < parts["audio_ffn"] < 2.3e9
    assert 3.1e9 < parts["llm_attention_text_ffn"] + parts["text_embed_head"] < 3.3e9
    assert 0.6e9 < parts["whisper_encoder"] + parts["projector"] < 0.7e9


def test_freeze_options_select_parts() -> None:
    cfg = RunConfig()
    cfg.model.freeze = "llm, whisper_encoder,projector"
    model = build_model(cfg, build_tiny_tokenizer(), GEO)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "llm.model.layers.0.self_attn.q_proj.weight" in frozen and "whisper.projector.weight" in frozen
    assert "llm.model.layers.0.audio_mlp.up_proj.weight" not in frozen and "llm.audio_lm_head.weight" not in frozen
    cfg.model.freeze = "decoder"
    with pytest.raises(ConfigError, match="unknown parts"):
        build_model(cfg, build_tiny_tokenizer(), GEO)


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
     ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla T4", None)],
)  # fmt: skip
def test_bf16_peak_by_gpu_name(name: str, peak: float | None) -> None:
    assert bf16_peak_for(name) == peak
