"""`python -m ds_train info`: parameter counts and model-state memory of a preset, built on the meta device."""

from __future__ import annotations

import torch
from transformers import HiggsAudioV2ForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.types import AudioGeometry
from ds_train.model.modeling import VoiceCloningModel, WhisperTower
from ds_train.model.parts import parameter_counts
from ds_train.model.presets import llm_config, whisper_config, zero_memory_per_gpu

# The published codec: 8 codebooks of 1024 codes.
HIGGS_GEOMETRY = AudioGeometry(num_codebooks=8, codec_codebook_size=1024)


def meta_model(preset: str, whisper_preset: str | None = "large-v3", text_head: bool = False) -> VoiceCloningModel:
    """The model's shape without allocating its weights (the 3b preset needs ~23 GB in fp32 otherwise)."""
    tokenizer = build_tiny_tokenizer()
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    with torch.device("meta"):
        llm = HiggsAudioV2ForConditionalGeneration(
            llm_config(preset, len(tokenizer), special, HIGGS_GEOMETRY), use_text_head=text_head
        )
        whisper = None
        if whisper_preset:
            whisper = WhisperTower(WhisperEncoder(whisper_config(whisper_preset)), llm.config.hidden_size)
        return VoiceCloningModel(llm, whisper, special.audio_in)


def describe(preset: str, whisper_preset: str | None, world_sizes: tuple[int, ...] = (1, 8, 64)) -> str:
    parts = parameter_counts(meta_model(preset, whisper_preset).named_parameters())
    lines = [f"preset {preset} (whisper: {whisper_preset or 'off'}), codec 8 x 1024:"]
    lines += [f"  {name:<22} {count / 1e9:8.3f} B params" for name, count in parts.items()]
    lines.append("  model states per GPU (bf16 weights+grads, fp32 AdamW), GiB, activations excluded:")
    for n in world_sizes:
        mem = zero_memory_per_gpu(parts["total"], n)
        lines.append(f"    {n:>3} GPUs: " + "  ".join(f"{k} {v:7.1f}" for k, v in mem.items()))
    return "\n".join(lines)
