"""The run config: one YAML file (dataclass-checked), overridable from the command line as `section.key=value`.

Relative paths inside a YAML file are relative to that file's folder; paths given as overrides are relative to the
current directory. `train.output_dir` is always relative to the current directory. `train.deepspeed_config` is looked
up there first, then in the project's `ds_configs/` (so `zero2_fp32.json` names the shipped file from anywhere). A
config is built once, by `RunConfig.from_dict` (YAML files and checkpoints alike), and validated where each section is
defined (every numeric key declares the range it accepts with `ranged(...)` beside its default); values resolved at
run time (the codec of a prepared set, the doctor's policies) make a new config with `with_overrides`, never a
mutation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ds_train.monitor.health import HealthCheck

log = logging.getLogger("ds_train")
# The shipped DeepSpeed JSONs: where a relative `train.deepspeed_config` is looked up after the run config's folder.
PROJECT_DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"

class ConfigError(ValueError):
    """A run or DeepSpeed config is invalid; the message says which key and why."""


Policy = Literal["warn", "halt"]
CHECK_POLICIES: tuple[str, ...] = typing.get_args(Policy)


@dataclass(frozen=True)
class Range:
    """The values a numeric config key accepts: finite, within [low, high] (an end is excluded when `*_open`, absent
    when None); `note` says what a special value (usually 0) means."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


def ranged(default: float, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, note: str = "") -> Any:  # fmt: skip
    """A numeric config field with the range it accepts (checked by `_Section.validate`)."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open, note)})


def numeric_range(f: dataclasses.Field) -> Range | None:
    """The declared range of a numeric field (None for a non-numeric one, or one that lacks a range)."""
    return f.metadata.get("range")


def is_numeric(f: dataclasses.Field) -> bool:
    return isinstance(f.default, (int, float)) and not isinstance(f.default, bool)


class _Section:
    """Validation shared by the sections: `Literal` fields must hold one of their choices, numeric fields must lie in
    their declared `Range` (every numeric field declares one), then `check()` runs."""

    def validate(self, section: str) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            choices = _literal_choices(hints[f.name])
            value = getattr(self, f.name)
            if choices and value not in choices:
                shown = ", ".join(repr(c) for c in choices)
                raise ConfigError(f"{section}.{f.name} must be one of {shown}, got {value!r}")
            if is_numeric(f):
                allowed = numeric_range(f)
                if allowed is None:  # a programming error: tests/unit/test_config.py walks every field
                    raise TypeError(f"{section}.{f.name} is numeric but declares no range (use ranged())")
                if value not in allowed:
                    note = f" ({allowed.note})" if allowed.note else ""
                    raise ConfigError(f"{section}.{f.name} must be {allowed}{note}, got {value!r}")
        self.check(section)

    def check(self, section: str) -> None:
        """Cross-field rules of the section (override to add some)."""


def _literal_choices(hint: Any) -> tuple:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) type hint; () for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    args = typing.get_args(hint)
    literals = [a for a in args if typing.get_origin(a) is Literal]
    if literals and type(None) in args:
        return (*typing.get_args(literals[0]), None)
    return ()


@dataclass
class ModelSection(_Section):
    preset: str = "tiny"  # random-init size when `path` is unset: tiny | 1b | 3b
    path: str | None = None  # local transformers-format HiggsAudioV2 directory (tokenizer included)
    tokenizer_path: str | None = None  # defaults to `path`; presets build a small BPE tokenizer
    text_head: bool = False
    # Comma-separated parts to freeze: llm (attention + text FFN + norms), audio_ffn, audio_embed_head,
    # text_embed_head, whisper_encoder, projector (same names as the per-part gradient norms).
    freeze: str = ""
    # > 0 trains LoRA adapters (peft) instead of the LLM weights; merged on export
    lora_rank: int = ranged(0, 0, note="0 = no LoRA")
    lora_alpha: float = ranged(16.0, 0, low_open=True)
    lora_dropout: float = ranged(0.0, 0, 1, high_open=True)
    # the one place the LoRA defaults live: attention, text FFN and audio FFN projections
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class WhisperSection(_Section):
    enabled: bool = True
    preset: str = "tiny"  # random-init encoder when `path` is unset: tiny | large-v3
    path: str | None = None  # local Whisper checkpoint directory (128 mel bins)
    trainable: bool = True  # False freezes the encoder; the projector still trains
    placement: Literal["user", "system"] = "user"  # turn that carries the reference's <|AUDIO|> span
    # where log-mel features are computed: loader (DataLoader workers, CPU) | device (training device, after the
    # batch is moved there) | auto (device on a GPU, else loader)
    features_on: Literal["auto", "loader", "device"] = "auto"
    # Alignment phase for a pretrained LLM that never saw Whisper embeddings (the published Higgs Audio v2 skips the
    # tower): for the first `align_steps` optimizer steps only the projector (and the encoder with `align_encoder`)
    # trains, at the constant LR `align_lr`; every other weight is held (LR 0). Then the normal warmup + cosine
    # schedule runs over the remaining train.max_steps - align_steps steps for everything the config unfreezes.
    align_steps: int = ranged(0, 0, note="0 = no alignment phase")
    align_lr: float = ranged(1e-4, 0, low_open=True)
    align_encoder: bool = False

    def check(self, section: str) -> None:
        if self.align_steps > 0 and not self.enabled:
            raise ConfigError(
                f"{section}.align_steps={self.align_steps} needs {section}.enabled=true (it aligns the Whisper "
                f"projector); set {section}.align_steps=0"
            )
        if self.align_steps > 0 and self.align_encoder and not self.trainable:
            raise ConfigError(
                f"{section}.align_encoder=true but {section}.trainable=false freezes the encoder; set one of them"
            )


@dataclass
class DataSection(_Section):
    manifest: str | None = None  # JSONL: id, ref_audio, ref_text, audio, text[, speaker, scene]
    # None: the codec a prepared set was encoded with, else "dac"; an explicit codec that contradicts the prepared set
    # is an error
    codec: Literal["dac", "higgs"] | None = None
    codec_path: str | None = None  # local codec weights
    prepared: str | None = None  # a data_pipeline.prepare output folder (used instead of manifest when set)
    micro_batch_size: int = ranged(4, 1)  # examples per micro-batch when max_tokens is 0
    # > 0: token-budget micro-batches (padded tokens per micro-batch), length-bucketed
    max_tokens: int = ranged(0, 0, note="0 = micro_batch_size examples")
    # DataLoader worker processes (0 = load in the training process)
    num_workers: int = ranged(1, 0, note="0 = load in the training process")
    # stop when more than this fraction of rows failed to load (after 100 rows)
    max_bad_fraction: float = ranged(0.01, 0, 1)
    # Which reference each training example is cloned from: "fixed" (the manifest's pairing) or "same_speaker"
    # (per epoch, another stored utterance of its speaker lasting [reference_min_seconds, reference_max_seconds];
    # needs data.prepared and a `speaker` per row; data_pipeline/loading/reference_choice.py). Evaluation always uses
    # "fixed".
    reference: Literal["fixed", "same_speaker"] = "fixed"
    reference_min_seconds: float = ranged(1.0, 0, low_open=True)
    reference_max_seconds: float = ranged(30.0, 0, low_open=True)
    # Held-out evaluation set (ideally speakers the training set lacks): a manifest or a prepare output, same codec.
    eval_manifest: str | None = None
    eval_prepared: str | None = None

    def check(self, section: str) -> None:
        if self.eval_manifest and self.eval_prepared:
            raise ConfigError(f"set {section}.eval_manifest or {section}.eval_prepared, not both")
        if self.reference == "same_speaker" and not self.prepared:
            raise ConfigError(
                f"{section}.reference=same_speaker needs {section}.prepared (a prepared set, whose rows carry their "
                "speaker): run python -m data_pipeline.prepare on the manifest first"
            )
        if self.reference_min_seconds > self.reference_max_seconds:
            raise ConfigError(f"{section}.reference_min_seconds must be <= {section}.reference_max_seconds")


@dataclass
class TrainSection(_Section):
    deepspeed_config: str = "zero2_bf16.json"
    output_dir: str = "runs/default"
    max_steps: int = ranged(300, 1)  # optimizer steps
    lr: float = ranged(1e-3, 0, low_open=True)
    min_lr: float = ranged(1e-6, 0)  # the schedule never goes below this
    warmup_steps: int = ranged(10, 0)
    gradient_accumulation_steps: int = ranged(1, 1)
    gradient_clipping: float = ranged(1.0, 0, note="0 = no clipping")
    weight_decay: float = ranged(0.0, 0)
    seed: int = ranged(1234, 0, 2**32 - 1)  # numpy's seed range
    log_every: int = ranged(10, 1)
    save_every: int = ranged(100, 1)  # also saves at the last step, and on SIGTERM/SIGINT or the wall-time limit
    # evaluate on data.eval_* every N steps and at the last step; 0 = never
    eval_every: int = ranged(100, 0, note="0 = never")
    keep_best: bool = True  # with an eval set: checkpoint each new best eval loss, kept apart from keep_last
    keep_last: int = ranged(3, 0, note="0 keeps all")  # checkpoints kept (older ones are deleted)
    # save and stop cleanly after this long
    max_wall_minutes: float = ranged(0.0, 0, note="0 = no limit")
    # A rank that shows no sign of life this long (its process hangs, its host is cut off) ends the run with a line
    # naming it (ds_train/components/peers.py); a dead one is named at the next collective.
    peer_timeout_minutes: float = ranged(2.0, 0, note="0 = no watch")
    activation_checkpointing: bool = False  # recompute decoder-layer (and Whisper) activations in backward
    tensorboard: bool = True
    # Fault injection for resilience tests: rank 0 SIGKILLs itself right after saving this step (0 = off).
    debug_kill_after_step: int = ranged(0, 0, note="0 = off")

    def check(self, section: str) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(
                f"{section}.min_lr={self.min_lr:g} is above {section}.lr={self.lr:g}: the floor would replace the "
                "whole schedule; lower train.min_lr"
            )


@dataclass
class MonitorSection(_Section):
    """Health checks run every step; each is "warn" or "halt" (stop after `halt_after` consecutive failing steps)."""

    halt_after: int = ranged(3, 1)
    # One policy per `HealthCheck` (ds_train/monitor/health.py), named on_<check>.
    # Checks on each collated micro-batch, before the model sees it; failing samples are dropped either way.
    on_whisper_features: Policy = "halt"  # Whisper on: a sample's reference features missing or silent, or unplaced
    on_reference_codes: Policy = "halt"  # a sample's prompt carries no reference codec codes before its target
    on_codec_codes: Policy = "halt"  # a sample has no labelled target codes
    on_decode_ids: Policy = "halt"  # token ids outside the tokenizer's vocabulary or the codebook
    on_grad_norm: Policy = "halt"  # global grad norm zero or non-finite
    on_nonfinite_loss: Policy = "halt"  # the micro-batch is skipped either way
    on_params_unchanged: Policy = "warn"  # trainable weights did not move over a step
    on_lr_floor: Policy = "warn"  # effective LR below train.min_lr (the floor clamps it; this reports the schedule)
    on_lr_low: Policy = "halt"  # LR far below the configured schedule, or a schedule that cannot learn
    # A reference is silent when every one of its Whisper chunks has an RMS below this (waveform, about -80 dBFS), or,
    # where only features exist, log-mel features whose standard deviation is below `silent_feature_std`.
    silent_rms: float = ranged(1e-4, 0)
    silent_feature_std: float = ranged(1e-3, 0)
    # lr_low: applied LR < this x the configured schedule's LR at that step
    lr_low_ratio: float = ranged(0.1, 0, 1, low_open=True)
    lr_low_below: float = ranged(1e-6, 0)  # lr_low: a schedule whose highest LR is below this cannot train
    # per-part gradient norms (LLM, audio FFN, Whisper, ...) every N steps
    part_norms_every: int = ranged(10, 0, note="0 = never")
    # decoded text and audio to TensorBoard every N steps (rank 0)
    decode_every: int = ranged(100, 0, note="0 = never")
    # Each evaluation, rank 0 also generates (free-running, greedy) `generate_samples` eval examples (the first ones,
    # the same each time), each up to twice its real length and at most `generate_seconds`; it reports cloning/gen_*
    # (stop rate, duration ratio, silence; ds_train/evaluation/generation_eval.py) and logs the first as TensorBoard
    # audio. Under ZeRO-3 every rank generates the same batch in step (no rank holds every weight). 0 = off.
    generate_seconds: float = ranged(10.0, 0, note="0 = off")
    generate_samples: int = ranged(4, 0, note="0 = off")
    speaker_model: str | None = None  # local transformers x-vector model dir: adds cloning/gen_speaker_sim(_target)
    asr_model: str | None = None  # local transformers Whisper ASR dir: adds cloning/gen_wer(_target)
    # Conditioning gain (ds_train/evaluation/conditioning.py): each evaluation also scores the eval set with another
    # speaker's reference. A reference_ignored finding: the swap changes nothing at all (any evaluation), or the gain
    # (eval loss swapped - true) is below `reference_ignored_below` nats at or after step `reference_ignored_after`
    # once the eval loss improved by less than `reference_ignored_plateau` (a fraction) since the previous
    # evaluation. Skipped on eval sets with fewer than 2 speakers.
    on_reference_ignored: Policy = "warn"
    reference_ignored_after: int = ranged(200, 0)
    reference_ignored_below: float = ranged(0.01, 0)
    reference_ignored_plateau: float = ranged(0.02, 0)
    conditioning_gain: bool = True  # False: no swapped scoring (1 eval pass fewer, 3 with Whisper), no check

    def policy(self, check: HealthCheck) -> Policy:
        return getattr(self, check.config_key)

    def check(self, section: str) -> None:
        missing = [c.config_key for c in HealthCheck if not hasattr(self, c.config_key)]
        if missing:  # a check added to HealthCheck needs its policy field here
            raise ConfigError(f"{section} lacks policies {missing}")


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    whisper: WhisperSection = field(default_factory=WhisperSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path | None = None, source: str = "run config") -> RunConfig:
        """The one constructor: {section: {key: value}} (a YAML file, or a checkpoint's saved config) -> a validated
        config. Relative paths are resolved against `base` when given."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        cfg = cls()
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section!r} must be a mapping")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, base)
        cfg.validate()
        return cfg

    def with_overrides(self, overrides: list[str] | tuple[str, ...], base: Path | None = None) -> RunConfig:
        """A new, validated config with `section.key=value` overrides (YAML values) applied; relative paths are
        resolved against `base` (default: the current directory). This config is left as it is."""
        values = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            key, text = item.split("=", 1)
            values[key.strip()] = yaml.safe_load(text) if text != "" else None
        return self.with_values(values, base or Path.cwd())

    def with_values(self, values: dict[str, Any], base: Path | None = None) -> RunConfig:
        """A new, validated config with {"section.key": value} set; this config is left as it is."""
        cfg = dataclasses.replace(
            self, **{f.name: dataclasses.replace(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )
        for key, value in values.items():
            _set(cfg, key, value, base)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        if self.whisper.align_steps and self.whisper.align_steps >= self.train.max_steps:
            raise ConfigError(
                f"whisper.align_steps={self.whisper.align_steps} must be < train.max_steps={self.train.max_steps}: "
                "the alignment phase would leave no step to train the rest"
            )


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
    ("monitor", "speaker_model"),
    ("monitor", "asr_model"),
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
    default = names[parts[1]].default
    if isinstance(value, str) and isinstance(default, float):
        # YAML 1.1 reads "5e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) and not isinstance(default, bool) and default is not None:
        raise ConfigError(f"{dotted} must be {type(default).__name__}, got {value!r}")  # YAML true is an int too
    if value is not None and default is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ConfigError(f"{dotted} must be {type(default).__name__}, got {value!r}")
    if dotted == "train.deepspeed_config" and value is not None:
        value = str(find_deepspeed_config(value, base or Path.cwd()))
    elif (parts[0], parts[1]) in _PATH_FIELDS and value is not None and base is not None:
        value = str((base / value).resolve()) if not Path(value).is_absolute() else value
    setattr(section, parts[1], value)


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) + `key.sub=value` overrides -> RunConfig."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"run config {path} does not exist")
        cfg = RunConfig.from_dict(_read_yaml(path) or {}, path.parent.resolve(), str(path))
    return cfg.with_overrides(overrides)


def _read_yaml(path: Path) -> Any:
    """A YAML file's content; a file that is not UTF-8 or not YAML is a ConfigError naming its line and column."""
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: byte {err.start} is not UTF-8 ({err.reason}); re-save the file as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def _read_json(path: Path, key: str) -> dict[str, Any]:
    """A JSON object file; invalid JSON is a ConfigError naming the file, line, column and the key that named it."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} ({key}): byte {err.start} is not UTF-8 ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} ({key}): invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} ({key}): top level must be a JSON object, got {type(doc).__name__}")
    return doc


def find_deepspeed_config(name: str | Path, base: Path) -> Path:
    """A `train.deepspeed_config` value -> the file it names: an absolute path as it is; a relative one in `base` (the
    run config's folder, or the current directory for an override or the default), else in the project's
    `ds_configs/`. When neither holds it, the path in `base` (the error then names both places)."""
    path = Path(name)
    if path.is_absolute():
        return path
    for folder in (base, PROJECT_DS_CONFIGS):
        if (folder / path).is_file():
            return (folder / path).resolve()
    return (base / path).resolve()


def resolve_deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """Load the DeepSpeed JSON the run names and fill its "auto" (or missing) batch, clipping and LR values from the
    run config. An explicit value that contradicts the run config is an error, not a silent override."""
    path = find_deepspeed_config(cfg.train.deepspeed_config, Path.cwd())
    if not path.is_file():
        raise ConfigError(
            f"DeepSpeed config {path} does not exist (train.deepspeed_config={cfg.train.deepspeed_config}; a relative "
            f"name is looked up in the run config's folder, or the current directory for an override, then in "
            f"{PROJECT_DS_CONFIGS})"
        )
    log.info("DeepSpeed config: %s", path)
    ds = _read_json(path, "train.deepspeed_config")
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
