"""An exported folder (`python -m ds_train export`): its file names, and loading it (or a checkpoint) for inference.

    OUT/ config.json, model.safetensors    transformers' HiggsAudioV2ForConditionalGeneration (LoRA merged)
         tokenizer files                   the run's tokenizer
         whisper_tower/                    Whisper on: encoder config + weights, projector.safetensors
         codec/                            a copy of the codec's weights (a DAC file or a Higgs codec folder)
         run_config.json                   the run config, its model, Whisper and codec paths relative to OUT
         ds_train_export.json              what was exported, from where, and the audio geometry

The folder depends on nothing outside it: moved or copied elsewhere, `generate` and `evaluate` take it as
`--checkpoint`, and `model.path=OUT whisper.path=OUT/whisper_tower` continue training from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.errors import UsageError
from data_pipeline.types import AudioGeometry
from ds_train.components.checkpoint import LATEST_FILE, load_checkpoint_model
from ds_train.config import ConfigError, RunConfig
from ds_train.model.build import build_model, build_tokenizer

EXPORT_META = "ds_train_export.json"
RUN_CONFIG_FILE = "run_config.json"
WHISPER_SUBDIR = "whisper_tower"
CODEC_SUBDIR = "codec"


def is_exported(path: str | Path) -> bool:
    return (Path(path) / EXPORT_META).is_file()


def exported_run_config(cfg: RunConfig, codec_name: str) -> dict:
    """The run config an exported folder carries: the model, tokenizer, Whisper tower and codec are the folder's own
    (paths relative to it, resolved when it is loaded), LoRA is merged, and inference keeps activations."""
    raw = cfg.with_values({"model.tokenizer_path": None, "model.lora_rank": 0,
                           "train.activation_checkpointing": False}).to_dict()  # fmt: skip
    raw["model"]["path"] = "."
    raw["whisper"]["path"] = WHISPER_SUBDIR if cfg.whisper.enabled else None
    raw["data"]["codec_path"] = f"{CODEC_SUBDIR}/{codec_name}"
    return raw

def load_exported_model(folder: str | Path):
    """An exported folder -> (VoiceCloningModel, tokenizer, RunConfig, AudioGeometry), as `load_checkpoint_model`."""
    folder = Path(folder).resolve()
    meta = json.loads((folder / EXPORT_META).read_text())
    config_file = folder / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"{folder} has no {RUN_CONFIG_FILE}: it was exported by an older version; export the "
                          "checkpoint again")  # fmt: skip
    cfg = RunConfig.from_dict(json.loads(config_file.read_text()), base=folder, source=str(config_file))
    tokenizer = build_tokenizer(cfg)
    geometry = AudioGeometry(int(meta["num_codebooks"]), int(meta["codec_codebook_size"]))
    return build_model(cfg, tokenizer, geometry).eval(), tokenizer, cfg, geometry


def load_for_inference(path: str | Path, which: str = LATEST_FILE):
    """A checkpoint (run output dir, its checkpoints/ dir or one tag dir; `which` picks the tag) or an exported folder
    -> (VoiceCloningModel, tokenizer, RunConfig, AudioGeometry)."""
    if is_exported(path):
        if which != LATEST_FILE:
            raise UsageError(f"--tag {which}: {path} is an exported folder (one model, no tags); drop --tag")
        return load_exported_model(path)
    return load_checkpoint_model(Path(path), which)
