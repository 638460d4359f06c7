"""Random-init model sizes. `tiny` trains on CPU in seconds; `3b` is the published Llama-3.2-3B geometry."""

from __future__ import annotations

from transformers import HiggsAudioV2Config, WhisperConfig

from data_pipeline.layout.text_tokens import SpecialTokenIds
from data_pipeline.types import AudioGeometry
from ds_train.config import ConfigError

LLM_PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=4096,
        vocab_size=128256,
    ),
    "3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=4096,
        vocab_size=128256,
    ),
}

WHISPER_PRESETS: dict[str, dict] = {
    "tiny": dict(
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
    ),
    # whisper-large-v3: 32 layers, d_model 1280, 128 mel bins (only the encoder is used).
    "large-v3": dict(
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=32,
        decoder_attention_heads=20,
        decoder_ffn_dim=5120,
    ),
}


def llm_config(preset: str, vocab_size: int, special: SpecialTokenIds, geometry: AudioGeometry) -> HiggsAudioV2Config:
    """HiggsAudioV2Config for a preset, with token ids taken from the tokenizer and codebooks from the codec."""
    if preset not in LLM_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r} (model.preset); choose one of {sorted(LLM_PRESETS)}")
    shape = dict(LLM_PRESETS[preset])
    # Large presets keep the published vocabulary size so memory and FLOPs are representative.
    vocab_size = max(vocab_size, shape.pop("vocab_size", 0))
    return HiggsAudioV2Config(
        **shape,
        vocab_size=vocab_size,
        num_codebooks=geometry.num_codebooks,
        codebook_size=geometry.model_codebook_size,
        audio_stream_bos_id=geometry.stream_bos,
        audio_stream_eos_id=geometry.stream_eos,
        audio_token_id=special.audio_out,
        audio_bos_token_id=special.audio_out_bos,
        audio_delay_token_id=special.audio_delay,
        pad_token_id=special.pad,
        bos_token_id=special.begin_of_text,
        eos_token_id=special.eot,
    )


def whisper_config(preset: str) -> WhisperConfig:
    if preset not in WHISPER_PRESETS:
        raise ConfigError(
            f"unknown whisper preset {preset!r} (whisper.preset); choose one of {sorted(WHISPER_PRESETS)}"
        )
    return WhisperConfig(num_mel_bins=128, max_source_positions=1500, dropout=0.0, **WHISPER_PRESETS[preset])

