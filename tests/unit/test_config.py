"""Run config loading, overrides and DeepSpeed "auto" filling."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from ds_train.config import (
    ConfigError,
    RunConfig,
    is_numeric,
    load_run_config,
    numeric_range,
    resolve_deepspeed_config,
)
from tests.helpers import CONFIGS


def test_yaml_paths_are_relative_to_the_yaml_and_overrides_typed(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(
        "data:\n  manifest: corpus/m.jsonl\n  prepared: prep\n  eval_prepared: ../held_out\n"
        "train:\n  deepspeed_config: ds.json\n"
    )
    cfg = load_run_config(tmp_path / "run.yaml", ["train.lr=5e-4", "train.max_steps=7", "whisper.enabled=false"])
    assert cfg.data.manifest == str(tmp_path / "corpus" / "m.jsonl")
    assert cfg.data.prepared == str(tmp_path / "prep")
    assert cfg.data.eval_prepared == str(tmp_path.parent / "held_out")
    assert cfg.train.deepspeed_config == str(tmp_path / "ds.json")
    assert cfg.train.lr == 5e-4 and cfg.train.max_steps == 7 and cfg.whisper.enabled is False


def test_relative_deepspeed_config_is_found_from_anywhere(tmp_path: Path, monkeypatch, caplog) -> None:
    """A copy of demo.yaml in the user's own folder, run from another folder: its `zero2_bf16.json` and the default
    come from the project's ds_configs/; a file of that name beside the run config wins; the one used is logged."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.yaml").write_text((CONFIGS / "demo.yaml").read_text())
    cfg = load_run_config(mine / "run.yaml")
    with caplog.at_level("INFO", logger="ds_train"):
        assert resolve_deepspeed_config(cfg, 1)["zero_optimization"]["stage"] == 2
    assert f"DeepSpeed config: {CONFIGS / 'zero2_bf16.json'}" in caplog.text
    assert resolve_deepspeed_config(load_run_config(None), 1)["bf16"]["enabled"] is True  # the default's name
    fp32 = load_run_config(mine / "run.yaml", ["train.deepspeed_config=zero2_fp32.json"])
    assert Path(fp32.train.deepspeed_config) == CONFIGS / "zero2_fp32.json"
    own = json.loads((CONFIGS / "zero1_bf16.json").read_text())
    (mine / "zero2_bf16.json").write_text(json.dumps(own))  # the run config's folder comes first
    assert resolve_deepspeed_config(load_run_config(mine / "run.yaml"), 1)["zero_optimization"]["stage"] == 1
    with pytest.raises(ConfigError, match="does not exist .*then in .*ds_configs"):
        resolve_deepspeed_config(load_run_config(None, ["train.deepspeed_config=zero9.json"]), 1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nope=1", "valid keys in 'train'"),
        ("trainer.lr=1", "unknown config key"),
        ("train.max_steps=abc", "must be int"),
        ("train.lr", "section.key=value"),
        ("whisper.placement=assistant", "placement"),
        ("train.eval_every=-1", "eval_every"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [override])


def test_deepspeed_auto_values_come_from_the_run_config() -> None:
    cfg = load_run_config(
        CONFIGS / "demo.yaml",
        [
            "data.micro_batch_size=3",
            "train.gradient_accumulation_steps=2",
            "train.lr=0.01",
            "train.gradient_clipping=0.5",
        ],
    )
    ds = resolve_deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 24
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 0.01
    assert ds["bf16"]["enabled"] is True and ds["zero_optimization"]["stage"] == 2


def test_explicit_deepspeed_value_that_contradicts_the_run_config_is_an_error(tmp_path: Path) -> None:
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    cfg = load_run_config(None, [f"train.deepspeed_config={ds_file}", "data.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu is 8"):
        resolve_deepspeed_config(cfg, world_size=1)


def _outside(allowed) -> float:
    """A value just outside a declared range (below its low end when it has one)."""
    if allowed.low is not None:
        return allowed.low if allowed.low_open else allowed.low - 1
    return allowed.high if allowed.high_open else allowed.high + 1


def test_every_numeric_key_declares_a_range_and_refuses_values_outside_it() -> None:
    """Walks every numeric field of every section: a new field without a range fails here."""
    checked = 0
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory()):
            if not is_numeric(f):
                continue
            key = f"{section.name}.{f.name}"
            allowed = numeric_range(f)
            assert allowed is not None, f"{key} declares no range (use config.ranged())"
            assert f.default in allowed, key
            bad = _outside(allowed)
            with pytest.raises(ConfigError, match=re.escape(f"{key} must be {allowed}")):
                load_run_config(None, [f"{key}={bad}"])
            if isinstance(f.default, float):
                with pytest.raises(ConfigError, match=re.escape(f"{key} must be {allowed}")):
                    load_run_config(None, [f"{key}=.nan"])
            checked += 1
    assert checked >= 35


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=0", "train.max_steps must be >= 1, got 0"),
        ("train.max_steps=-5", "train.max_steps must be >= 1, got -5"),
        ("train.warmup_steps=-3", "train.warmup_steps must be >= 0, got -3"),
        ("train.gradient_clipping=-1", "train.gradient_clipping must be >= 0 (0 = no clipping), got -1.0"),
        ("train.keep_last=-1", "train.keep_last must be >= 0 (0 keeps all), got -1"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("train.save_every=0", "train.save_every must be >= 1, got 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0 (0 = load in the training process), got -1"),
        ("data.max_bad_fraction=1.5", "data.max_bad_fraction must be in [0, 1], got 1.5"),
        ("train.max_steps=true", "train.max_steps must be int, got True"),
    ],
)
def test_nonsense_numbers_are_refused_with_the_key_and_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config(None, [override])


def test_yaml_and_deepspeed_json_syntax_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("train:\n  lr: 1e-3\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"{run}: invalid YAML at line 4, column 1")):
        load_run_config(run)
    ds = tmp_path / "ds.json"
    ds.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    cfg = load_run_config(None, [f"train.deepspeed_config={ds}"])
    expected = f"{ds} (train.deepspeed_config): invalid JSON at line 2, column 36"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        resolve_deepspeed_config(cfg, world_size=1)
