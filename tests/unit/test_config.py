"""Run config loading, overrides and DeepSpeed "auto" filling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ds_train.config import ConfigError, load_run_config, resolve_deepspeed_config
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
