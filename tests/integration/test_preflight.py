"""Pre-flight machine checks: with the optimizer offloaded, CPU Adam needs a compiler, ninja and Python headers."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from ds_train.components.distributed import init_distributed
from ds_train.components.preflight import missing_build_tools, uses_cpu_adam
from ds_train.config import ConfigError
from ds_train.trainer import Trainer
from tests.helpers import CONFIGS, make_config


@pytest.mark.parametrize(
    ("name", "expected"),
    [("zero3_offload_bf16.json", True), ("zero3_bf16.json", False), ("zero2_bf16.json", False),
     ("zero2_fp32.json", False)],
)  # fmt: skip
def test_only_the_offload_config_uses_cpu_adam(name: str, expected: bool) -> None:
    ds = json.loads((CONFIGS / name).read_text())
    assert uses_cpu_adam(ds) is expected
    if expected:  # PyTorch's AdamW instead: nothing to build
        ds["optimizer"]["params"]["torch_adam"] = True
        assert not uses_cpu_adam(ds)


def test_missing_build_tools_are_named(tmp_path: Path) -> None:
    assert missing_build_tools() == []  # this machine builds CPU Adam (the offload config trains in the tests)
    missing = missing_build_tools(search_path=str(tmp_path), include_dir=str(tmp_path))
    assert len(missing) == 3 and "C++ compiler" in missing[0] and "ninja" in missing[1] and "Python.h" in missing[2]


def test_offload_without_build_tools_fails_before_building_anything(assets, tmp_path, monkeypatch) -> None:
    init_distributed()  # loads DeepSpeed's CPU comm op (which needs ninja here) before PATH is emptied
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no compiler and no ninja on this PATH
    with pytest.raises(ConfigError, match=r"(?s)zero3_offload_bf16.json offloads the optimizer.*ninja.*torch_adam"):
        Trainer(make_config(assets, tmp_path / "run", ds="zero3_offload_bf16.json"))
    assert not (tmp_path / "run").exists()  # stopped before the output folder, data or model


def test_an_interrupted_extension_build_is_named_at_start_up(assets, tmp_path, monkeypatch, caplog) -> None:
    """A JIT build killed midway leaves its `lock`; every later run that needs the op would wait on it silently. The
    trainer names an old lock (and only an old one) before DeepSpeed builds anything."""
    init_distributed()  # DeepSpeed's CPU comm op is loaded from the real extensions folder before it is redirected
    root = tmp_path / "torch_extensions"
    for name, age_s in (("cpu_adam", 3600), ("fresh_op", 10)):
        (root / name).mkdir(parents=True)
        (root / name / "lock").touch()
        os.utime(root / name / "lock", (time.time() - age_s, time.time() - age_s))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    with caplog.at_level(logging.WARNING, logger="ds_train"):
        Trainer(make_config(assets, tmp_path / "run", "train.max_steps=1"))
    named = [r.getMessage() for r in caplog.records if "JIT build" in r.getMessage()]
    assert len(named) == 1 and str(root / "cpu_adam" / "lock") in named[0] and "60 min old" in named[0]
    assert "delete the file" in named[0]
