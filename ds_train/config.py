"""The run config: one YAML file (dataclass-checked), overridable from the command line as `section.key=value`.

Relative paths inside a YAML file are relative to that file's folder; paths given as overrides are relative to the
current directory. `train.output_dir` is always relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A run or DeepSpeed config is invalid; the message says which key and why."""


@dataclass
class ModelSection:
    preset: str = "tiny"  # random-init size when `path` is unset: tiny | 1b | 3b
    path: str | None = None  # local transformers-format HiggsAudioV2 directory (tokenizer included)
    tokenizer_path: str | None = None  # defaults to `path`; presets build a small BPE tokenizer
    text_head: bool = False
    # Comma-separated parts to freeze: llm (attention + text FFN + norms), audio_ffn, audio_embed_head,
    # text_embed_head, whisper_encoder, projector (same names as the per-part gradient norms).
    freeze: str = ""
    lora_rank: int = 0  # > 0 trains LoRA adapters (peft) instead of the LLM weights; merged on export
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # attention, text and audio FFN


@dataclass
class WhisperSection:
    enabled: bool = True
    preset: str = "tiny"  # random-init encoder when `path` is unset: tiny | large-v3
    path: str | None = None  # local Whisper checkpoint directory (128 mel bins)
    trainable: bool = True  # False freezes the encoder; the projector still trains
    placement: str = "user"  # turn that carries the reference's <|AUDIO|> span: user | system
    # where log-mel features are computed: loader (DataLoader workers, CPU) | device (training device, after the
    # batch is moved there) | auto (device on a GPU, else loader)
    features_on: str = "auto"


@dataclass
class DataSection:
    manifest: str | None = None  # JSONL: id, ref_audio, ref_text, audio, text[, speaker, scene]
    codec: str = "dac"
    codec_path: str | None = None  # local codec weights
    prepared: str | None = None  # a data_pipeline.prepare output folder (used instead of manifest when set)
    micro_batch_size: int = 4  # examples per micro-batch when max_tokens is 0
    max_tokens: int = 0  # > 0: token-budget micro-batches (padded tokens per micro-batch), length-bucketed
    num_workers: int = 1  # DataLoader worker processes (0 = load in the training process)
    max_bad_fraction: float = 0.01  # stop when more than this fraction of rows failed to load (after 100 rows)
    # Held-out evaluation set (ideally speakers the training set lacks): a manifest or a prepare output, same codec.
    eval_manifest: str | None = None
    eval_prepared: str | None = None


@dataclass
class TrainSection:
    deepspeed_config: str = "zero2_bf16.json"
    output_dir: str = "runs/default"
    max_steps: int = 300  # optimizer steps
    lr: float = 1e-3
    min_lr: float = 1e-6  # the schedule never goes below this
    warmup_steps: int = 10
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    weight_decay: float = 0.0
    seed: int = 1234
    log_every: int = 10
    save_every: int = 100  # also saves at the last step, and on SIGTERM/SIGINT or the wall-time limit
    eval_every: int = 100  # evaluate on data.eval_* every N steps and at the last step; 0 = never
    keep_best: bool = True  # with an eval set: checkpoint each new best eval loss, kept apart from keep_last
    keep_last: int = 3  # checkpoints kept (older ones are deleted); 0 keeps all
    max_wall_minutes: float = 0.0  # save and stop cleanly after this long; 0 = no limit
    activation_checkpointing: bool = False  # recompute decoder-layer (and Whisper) activations in backward
    tensorboard: bool = True
    # Fault injection for resilience tests: rank 0 SIGKILLs itself right after saving this step (0 = off).
    debug_kill_after_step: int = 0


CHECK_POLICIES = ("warn", "halt")


@dataclass
class MonitorSection:
    """Health checks run every step; each is "warn" or "halt" (stop after `halt_after` consecutive failing steps)."""

    halt_after: int = 3
    on_whisper_features: str = "halt"  # Whisper on, but features empty/all zeros or no <|AUDIO|> position got them
    on_codec_codes: str = "halt"  # no codes at audio placeholders, or no labelled audio tokens
    on_grad_norm: str = "halt"  # global grad norm zero or non-finite
    on_nonfinite_loss: str = "halt"  # the micro-batch is skipped either way
    on_params_unchanged: str = "warn"  # trainable weights did not move over a step
    on_lr_floor: str = "warn"  # effective LR below train.min_lr (the floor clamps it; this reports the schedule)
    part_norms_every: int = 10  # per-part gradient norms (LLM, audio FFN, Whisper, ...) every N steps; 0 = never
    decode_every: int = 100  # decoded text and audio to TensorBoard every N steps (rank 0); 0 = never
    # Each evaluation, rank 0 also generates (free-running, greedy) up to this many seconds for one held-out sample
    # and logs it as TensorBoard audio; ZeRO-0/1/2 only (under ZeRO-3 no rank holds every weight). 0 = off.
    generate_seconds: float = 10.0


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    whisper: WhisperSection = field(default_factory=WhisperSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields holding file paths, resolved against the YAML file's folder.
_PATH_FIELDS = {
    ("model", "path"),
    ("model", "tokenizer_path"),
    ("whisper", "path"),
    ("data", "manifest"),
    ("data", "prepared"),
    ("data", "eval_manifest"),
    ("data", "eval_prepared"),
    ("data", "codec_path"),
    ("train", "deepspeed_config"),
}


def _set(cfg: RunConfig, dotted: str, value: Any, base: Path | None) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]):
        raise ConfigError(
            f"unknown config key {dotted!r}; keys look like 'train.lr' (sections: model, whisper, data, train, monitor)"
        )
    section = getattr(cfg, parts[0])
    names = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in names:
        raise ConfigError(f"unknown config key {dotted!r}; valid keys in '{parts[0]}': {', '.join(sorted(names))}")
    current = getattr(section, parts[1])
    if isinstance(value, str) and isinstance(current, float):
        # YAML 1.1 reads "5e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if value is not None and current is not None and not isinstance(value, type(current)):
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ConfigError(f"{dotted} must be {type(current).__name__}, got {value!r}")
    if (parts[0], parts[1]) in _PATH_FIELDS and value is not None and base is not None:
        value = str((base / value).resolve()) if not Path(value).is_absolute() else value
    setattr(section, parts[1], value)


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) + `key.sub=value` overrides -> RunConfig."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"run config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, path.parent.resolve())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        _set(cfg, key.strip(), yaml.safe_load(text) if text != "" else None, Path.cwd())
    for f in dataclasses.fields(cfg.monitor):
        if f.name.startswith("on_") and getattr(cfg.monitor, f.name) not in CHECK_POLICIES:
            raise ConfigError(f"monitor.{f.name} must be one of {CHECK_POLICIES}, got {getattr(cfg.monitor, f.name)!r}")
    if cfg.whisper.placement not in ("user", "system"):
        raise ConfigError(f"whisper.placement must be 'user' or 'system', got {cfg.whisper.placement!r}")
    if cfg.whisper.features_on not in ("auto", "loader", "device"):
        raise ConfigError(f"whisper.features_on must be auto, loader or device, got {cfg.whisper.features_on!r}")
    if cfg.data.eval_manifest and cfg.data.eval_prepared:
        raise ConfigError("set data.eval_manifest or data.eval_prepared, not both")
    if cfg.train.eval_every < 0:
        raise ConfigError(f"train.eval_every must be >= 0 (0 = never), got {cfg.train.eval_every}")
    return cfg


def resolve_deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """Load the DeepSpeed JSON the run names and fill its "auto" (or missing) batch, clipping and LR values from the
    run config. An explicit value that contradicts the run config is an error, not a silent override."""
    path = Path(cfg.train.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist (train.deepspeed_config)")
    ds = json.loads(path.read_text())
    t = cfg.train
    wanted = {
        ("train_micro_batch_size_per_gpu",): cfg.data.micro_batch_size,
        ("gradient_accumulation_steps",): t.gradient_accumulation_steps,
        ("gradient_clipping",): t.gradient_clipping,
        ("train_batch_size",): cfg.data.micro_batch_size * t.gradient_accumulation_steps * world_size,
    }
    if "optimizer" in ds:
        wanted[("optimizer", "params", "lr")] = t.lr
        wanted[("optimizer", "params", "weight_decay")] = t.weight_decay
    for keys, value in wanted.items():
        node = ds
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        have = node.get(keys[-1], "auto")
        if have == "auto":
            node[keys[-1]] = value
        elif have != value:
            raise ConfigError(
                f"{path}: {'.'.join(keys)} is {have!r} but the run config implies {value!r}; "
                f'set it to "auto" or change the run config'
            )
    return ds
