"""`python -m ds_train info`: parameter counts and model-state memory of a preset, a run config's memory plan (does it
fit the GPUs?), and a model/codec folder compared with the published Higgs Audio v2 layout. Models are built on the
meta device: no weights are allocated or read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.types import AudioGeometry
from ds_train.config import RunConfig, resolve_deepspeed_config
from ds_train.model.build import freeze_parts
from ds_train.model.lora import add_lora
from ds_train.model.memory import (
    DEFAULT_MAX_LIVE_PARAMETERS,
    DEFAULT_REDUCE_BUCKET,
    GIB,
    RUNTIME_OVERHEAD_GIB,
    LayerShape,
    activation_gib,
    model_states,
    zero_memory_per_gpu,
)
from ds_train.model.modeling import VoiceCloningModel, WhisperTower
from ds_train.model.parts import parameter_counts
from ds_train.model.presets import llm_config, whisper_config

# The published codec: 8 codebooks of 1024 codes.
HIGGS_GEOMETRY = AudioGeometry(num_codebooks=8, codec_codebook_size=1024)
# Padded tokens one example is assumed to take when a run batches by example count (data.max_tokens = 0), and the
# examples per micro-batch assumed under a token budget: 10 s of reference + 10 s of target at 25 frames/s.
DEFAULT_EXAMPLE_TOKENS = 500


def _meta_llm(llm_cfg: HiggsAudioV2Config, text_head: bool) -> HiggsAudioV2ForConditionalGeneration:
    with torch.device("meta"):
        return HiggsAudioV2ForConditionalGeneration(llm_cfg, use_text_head=text_head)


def _meta_tower(config: WhisperConfig, hidden: int) -> WhisperTower:
    with torch.device("meta"):
        return WhisperTower(WhisperEncoder(config), hidden)


def meta_model(preset: str, whisper_preset: str | None = "large-v3", text_head: bool = False) -> VoiceCloningModel:
    """The model's shape without allocating its weights (the 3b preset needs ~23 GB in fp32 otherwise)."""
    tokenizer = build_tiny_tokenizer()
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    llm = _meta_llm(llm_config(preset, len(tokenizer), special, HIGGS_GEOMETRY), text_head)
    whisper = _meta_tower(whisper_config(whisper_preset), llm.config.hidden_size) if whisper_preset else None
    return VoiceCloningModel(llm, whisper, special.audio_in)


def describe(preset: str, whisper_preset: str | None, world_sizes: tuple[int, ...] = (1, 8, 64)) -> str:
    parts = parameter_counts(meta_model(preset, whisper_preset).named_parameters())
    lines = [f"preset {preset} (whisper: {whisper_preset or 'off'}), codec 8 x 1024:"]
    lines += [f"  {name:<22} {count / 1e9:8.3f} B params" for name, count in parts.items()]
    lines.append("  model states per GPU (bf16 weights+grads, fp32 AdamW), GiB, activations excluded:")
    for n in world_sizes:
        mem = zero_memory_per_gpu(parts["total"], n)
        lines.append(f"    {n:>3} GPUs: " + "  ".join(f"{k} {v:7.1f}" for k, v in mem.items()))
    lines.append("  (python -m ds_train info --config RUN.yaml --gpus N --gpu-memory-gib G: a run's full memory plan)")
    return "\n".join(lines)


def _run_geometry(cfg: RunConfig) -> AudioGeometry:
    """The codec geometry a preset model is sized for: the run's codec when its weights are at hand, else the
    published 8 x 1024."""
    if cfg.data.codec_path and Path(cfg.data.codec_path).exists():
        from data_pipeline.codecs import load_codec

        codec = load_codec(cfg.data.codec or "dac", cfg.data.codec_path)
        return AudioGeometry(codec.num_codebooks, codec.codebook_size)
    return HIGGS_GEOMETRY


def run_meta_model(cfg: RunConfig) -> tuple[VoiceCloningModel, list[str]]:
    """The model a run config trains (model.path's config.json or the preset, the Whisper tower, LoRA, freezing), on
    the meta device; plus notes on what stood in for folders that are not here."""
    notes: list[str] = []
    path = Path(cfg.model.path) if cfg.model.path else None
    if path is not None and (path / "config.json").is_file():
        llm_cfg = HiggsAudioV2Config.from_pretrained(str(path), local_files_only=True)
        notes.append(f"model: {path}/config.json")
    else:
        preset = "3b" if path is not None else cfg.model.preset
        if path is not None:
            notes.append(f"model: {path} is not here; planned with the published geometry (preset 3b)")
        else:
            notes.append(f"model: preset {preset}")
        tokenizer = build_tiny_tokenizer()
        llm_cfg = llm_config(preset, len(tokenizer), SpecialTokenIds.from_tokenizer(tokenizer), _run_geometry(cfg))
    llm = _meta_llm(llm_cfg, cfg.model.text_head)
    whisper = None
    if cfg.whisper.enabled:
        wpath = Path(cfg.whisper.path) if cfg.whisper.path else None
        if wpath is not None and (wpath / "config.json").is_file():
            wcfg = WhisperConfig.from_pretrained(str(wpath), local_files_only=True)
            notes.append(f"whisper: {wpath}/config.json")
        else:
            if wpath is not None:
                notes.append(f"whisper: {wpath} is not here; planned with whisper.preset {cfg.whisper.preset}")
            wcfg = whisper_config(cfg.whisper.preset)
        whisper = _meta_tower(wcfg, llm.config.hidden_size)
        if not cfg.whisper.trainable:
            whisper.encoder.requires_grad_(False)
    if cfg.model.lora_rank > 0:
        with torch.device("meta"):
            add_lora(llm, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_dropout, cfg.model.lora_targets)
    model = VoiceCloningModel(llm, whisper, 0)
    freeze_parts(model, cfg.model.freeze)
    return model, notes


@dataclass(frozen=True)
class MemoryPlan:
    text: str
    total_gib: float
    fits: bool | None  # None: no GPU memory given


def _zero_settings(ds: dict) -> tuple[int, bool, bool, bool, float, float]:
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))

    def offloaded(key: str) -> bool:
        return zero.get(key, {}).get("device", "none") not in ("none", None)

    bf16 = bool(ds.get("bf16", {}).get("enabled", False)) or bool(ds.get("fp16", {}).get("enabled", False))
    live = float(zero.get("stage3_max_live_parameters", DEFAULT_MAX_LIVE_PARAMETERS))
    bucket = float(zero.get("reduce_bucket_size", DEFAULT_REDUCE_BUCKET))
    return stage, bf16, offloaded("offload_optimizer"), offloaded("offload_param"), live, bucket


def memory_plan(
    cfg: RunConfig,
    gpus: int,
    gpu_memory_gib: float | None = None,
    example_tokens: int = DEFAULT_EXAMPLE_TOKENS,
    source: str = "run config",
) -> MemoryPlan:
    """Per-GPU memory of one training step of `cfg` on `gpus` data-parallel ranks (ds_train/model/memory.py says how
    it is estimated), and whether it fits `gpu_memory_gib`."""
    model, notes = run_meta_model(cfg)
    ds = resolve_deepspeed_config(cfg, gpus)
    stage, bf16, off_opt, off_param, live, bucket = _zero_settings(ds)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params) - trainable
    states = model_states(trainable, frozen, stage, gpus, bf16, off_opt, off_param, live, bucket)

    c = model.llm.config
    llm_shape = LayerShape(c.num_hidden_layers, c.hidden_size, c.num_key_value_heads * c.head_dim,
                           c.intermediate_size, head_logits=c.num_codebooks * c.codebook_size)  # fmt: skip
    if cfg.data.max_tokens > 0:
        tokens, examples = cfg.data.max_tokens, math.ceil(cfg.data.max_tokens / example_tokens)
        token_note = f"{tokens} padded tokens (data.max_tokens)"
    else:
        tokens, examples = cfg.data.micro_batch_size * example_tokens, cfg.data.micro_batch_size
        token_note = f"{cfg.data.micro_batch_size} examples x {example_tokens} tokens (--example-tokens)"
    whisper_shape, chunks = None, 0
    if model.whisper is not None and any(p.requires_grad for p in model.whisper.encoder.parameters()):
        w = model.whisper.encoder.config
        whisper_shape = LayerShape(w.encoder_layers, w.d_model, w.d_model, w.encoder_ffn_dim, gated=False)
        chunks = examples
        token_note += f"; {chunks} Whisper chunk(s) of 30 s through the trainable encoder"
    checkpointing = cfg.train.activation_checkpointing
    act = activation_gib(llm_shape, tokens, checkpointing, whisper_shape, chunks, bf16)
    total = states.gpu_gib + act + RUNTIME_OVERHEAD_GIB

    offload = [name for name, on in (("optimizer", off_opt), ("params", off_param and stage == 3)) if on]
    rows = [
        ("weights", states.weights / GIB),
        ("gradients", states.grads / GIB),
        ("optimizer state", states.optimizer / GIB),
        ("activations", act),
        ("runtime allowance", RUNTIME_OVERHEAD_GIB),
    ]
    lines = [
        f"memory plan: {source} on {gpus} GPU(s)" + (f" of {gpu_memory_gib:g} GiB" if gpu_memory_gib else ""),
        *(f"  {n}" for n in notes),
        f"  parameters: {(trainable + frozen) / 1e9:.3f} B, trainable {trainable / 1e9:.3f} B"
        + (f" (LoRA rank {cfg.model.lora_rank})" if cfg.model.lora_rank else ""),
        f"  DeepSpeed: ZeRO-{stage} {'bf16' if bf16 else 'fp32'}, CPU offload: {', '.join(offload) or 'none'}; "
        f"activation checkpointing: {'on' if checkpointing else 'off'}",
        f"  micro-batch: {token_note}",
        f"  {'':<20}{'GPU GiB':>10}",
        *(f"  {name:<20}{value:>10.2f}" for name, value in rows),
        f"  {'total per GPU':<20}{total:>10.2f}",
    ]
    if states.host:
        lines.append(f"  host RAM for offloaded states: {states.host / GIB:.1f} GiB per rank, "
                     f"{states.host * gpus / GIB:.1f} GiB for all {gpus}")  # fmt: skip
    fits = None
    if gpu_memory_gib:
        fits = total <= gpu_memory_gib
        margin = gpu_memory_gib - total
        lines.append(f"  fits ({margin:.1f} GiB spare)" if fits else f"  does not fit ({-margin:.1f} GiB over)")
    return MemoryPlan("\n".join(lines), total, fits)
