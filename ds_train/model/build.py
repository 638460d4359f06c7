"""Builds the tokenizer, codec, dataset and model a run config describes. Nothing here downloads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import HiggsAudioV2ForConditionalGeneration, PreTrainedTokenizerBase
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from data_pipeline.codecs import Codec, load_codec
from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer, load_tokenizer
from data_pipeline.types import AudioGeometry, geometry_mismatch
from ds_train.config import ConfigError, RunConfig
from ds_train.model.lora import add_lora
from ds_train.model.modeling import PROJECTOR_FILE, VoiceCloningModel, WhisperTower, load_whisper_encoder
from ds_train.model.parts import parse_part_names, part_of
from ds_train.model.presets import llm_config, whisper_config

log = logging.getLogger(__name__)


# One of these makes a folder a tokenizer folder (fast tokenizer, SentencePiece, or byte-level BPE vocab + merges).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dirs(cfg: RunConfig) -> None:
    """Say what is missing from model.path / model.tokenizer_path before transformers fails on it (it would blame
    missing sentencepiece or tiktoken packages for an empty folder)."""
    m = cfg.model
    needs: dict[str, list[str]] = {}  # folder key -> what it must hold
    if m.path:
        needs["model.path"] = ["config.json"] + ([] if m.tokenizer_path else ["tokenizer"])
    if m.tokenizer_path:
        needs["model.tokenizer_path"] = ["tokenizer"]
    for key, wanted in needs.items():
        folder = Path(getattr(m, key.split(".")[1]))
        if not folder.is_dir():
            raise ConfigError(f"{key} {folder} does not exist (weights are never downloaded: give a local folder)")
        missing = []
        if "config.json" in wanted and not (folder / "config.json").is_file():
            missing.append("config.json")
        if "tokenizer" in wanted and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
        if missing:
            raise ConfigError(
                f"{key} {folder} is not a transformers model folder: no {' and no '.join(missing)}; point it at a "
                "folder holding the model's config.json, tokenizer files and weights"
            )


def build_tokenizer(cfg: RunConfig) -> PreTrainedTokenizerBase:
    check_model_dirs(cfg)
    path = cfg.model.tokenizer_path or cfg.model.path
    return load_tokenizer(path) if path else build_tiny_tokenizer()


def build_codec(cfg: RunConfig, device: str | torch.device = "cpu") -> Codec:
    if not cfg.data.codec_path:
        raise ConfigError("data.codec_path is not set: the codec's weights must be a local file")
    return load_codec(cfg.data.codec, cfg.data.codec_path, device)


def check_geometry(llm_cfg, geometry: AudioGeometry, source: str) -> None:
    """The LLM's audio vocabulary must match the codec's codebooks (+2 for the stream BOS/EOS ids)."""
    problem = geometry_mismatch(llm_cfg.to_dict(), geometry)
    if problem:
        raise ConfigError(f"{source}: {problem}")


def check_model_geometry(cfg: RunConfig, geometry: AudioGeometry) -> None:
    """Before any audio is encoded: a `model.path` model (its config.json, no weights) must take the codec's codes.
    A preset is built for the codec, so it always fits."""
    if not cfg.model.path:
        return
    config_file = Path(cfg.model.path) / "config.json"
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"model.path {cfg.model.path}: cannot read config.json ({err})") from None
    problem = geometry_mismatch(model_config if isinstance(model_config, dict) else {}, geometry)
    if problem:
        raise ConfigError(
            f"model.path {cfg.model.path}: {problem}; use the codec the model was trained with (data.codec, "
            "data.codec_path)"
        )


def check_special_tokens(llm_cfg, special: SpecialTokenIds, source: str) -> None:
    pairs = {
        "audio_token_id (<|AUDIO_OUT|>)": (llm_cfg.audio_token_id, special.audio_out),
        "audio_bos_token_id (<|audio_out_bos|>)": (llm_cfg.audio_bos_token_id, special.audio_out_bos),
        "audio_delay_token_id": (llm_cfg.audio_delay_token_id, special.audio_delay),
    }
    wrong = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if wrong:
        raise ConfigError(f"{source}: model config and tokenizer disagree on token ids (model, tokenizer): {wrong}")


def freeze_parts(model: VoiceCloningModel, spec: str) -> None:
    """Set requires_grad=False on the named parts (see ModelSection.freeze and ds_train/model/parts.py)."""
    try:
        parts = parse_part_names(spec, "model.freeze")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for name, param in model.named_parameters():
        if part_of(name) in parts:
            param.requires_grad_(False)


def build_model(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, geometry: AudioGeometry) -> VoiceCloningModel:
    """HiggsAudioV2ForConditionalGeneration (local weights or a random-init preset) + the Whisper tower."""
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    if cfg.model.path:
        path = Path(cfg.model.path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path {path} is not a transformers model directory (no config.json)")
        llm = HiggsAudioV2ForConditionalGeneration.from_pretrained(
            str(path), local_files_only=True, use_text_head=cfg.model.text_head
        )
        source = str(path)
    else:
        llm_cfg = llm_config(cfg.model.preset, len(tokenizer), special, geometry)
        llm = HiggsAudioV2ForConditionalGeneration(llm_cfg, use_text_head=cfg.model.text_head)
        source = f"preset {cfg.model.preset!r}"
    check_geometry(llm.config, geometry, source)
    check_special_tokens(llm.config, special, source)
    if len(tokenizer) > llm.config.vocab_size:
        raise ConfigError(f"{source}: tokenizer has {len(tokenizer)} tokens but the model only {llm.config.vocab_size}")

    whisper = None
    if cfg.whisper.enabled:
        encoder = (
            load_whisper_encoder(cfg.whisper.path)
            if cfg.whisper.path
            else WhisperEncoder(whisper_config(cfg.whisper.preset))
        )
        whisper = WhisperTower(encoder, llm.config.hidden_size)
        projector_file = Path(cfg.whisper.path or "") / PROJECTOR_FILE
        if cfg.whisper.path and projector_file.is_file():  # an exported tower carries its trained projector
            whisper.projector.load_state_dict(load_file(str(projector_file)))
        if not cfg.whisper.trainable:
            encoder.requires_grad_(False)
    if cfg.model.lora_rank > 0:
        m = cfg.model
        add_lora(llm, m.lora_rank, m.lora_alpha, m.lora_dropout, m.lora_targets)
    model = VoiceCloningModel(llm, whisper, special.audio_in)
    freeze_parts(model, cfg.model.freeze)
    if cfg.train.activation_checkpointing:
        # non-reentrant checkpointing works with frozen inputs and DeepSpeed's ZeRO hooks
        kwargs = {"use_reentrant": False}
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if whisper is not None:
            whisper.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("model from %s: %.2fM parameters, %.2fM trainable", source, total / 1e6, trainable / 1e6)
    return model
