"""Pre-flight machine checks: with the optimizer offloaded, CPU Adam needs a compiler, ninja and Python headers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ds_train.components.distributed import init_distributed
from ds_train.components.native_ops import extensions_root
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


def test_a_lock_left_in_the_cpu_adam_build_is_removed_before_deepspeed_loads_it(assets, tmp_path, caplog) -> None:
    """A process killed while loading CPU Adam leaves torch's `lock` in the op's build folder; DeepSpeed's own load
    would wait on it forever. The trainer loads the op first, under a lock that died with its holder, and removes it
    (ds_train/components/native_ops.py; tests/unit/test_native_ops.py shows the hang it prevents)."""
    # In the machine's own build folder: the op is built there once for the whole suite (2-3 min on 2 cores), and
    # a lock this test leaves behind when the guard is gone hangs every later offload test too.
    lock = extensions_root() / "cpu_adam" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    with caplog.at_level(logging.WARNING, logger="ds_train"):
        trainer = Trainer(make_config(assets, tmp_path / "run", "train.max_steps=1", ds="zero3_offload_bf16.json"))
    named = [r.getMessage() for r in caplog.records if "left by a process killed" in r.getMessage()]
    assert named == [f"removing {lock}, left by a process killed while it loaded the 'cpu_adam' op"]
    assert not lock.exists() and trainer.train_step().step == 1
