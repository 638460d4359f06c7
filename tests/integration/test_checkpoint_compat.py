"""Checkpoints written before the components existed (main at 19e25a1: client keys micro_batches, data_position, rng,
monitor, best_eval_loss) still resume; an unknown client state fails with a message saying why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ds_train.components.checkpoint import component_states
from ds_train.errors import CheckpointError
from ds_train.trainer import Trainer
from tests.helpers import REPO, make_config

LEGACY = REPO / "tests" / "fixtures" / "legacy_checkpoint"  # 2 steps of the test corpus, ZeRO-2 fp32, tiny preset


def test_a_checkpoint_written_by_the_previous_layout_resumes(assets, tmp_path: Path) -> None:
    shutil.copytree(LEGACY, tmp_path, dirs_exist_ok=True)
    trainer = Trainer(make_config(assets, tmp_path, "train.max_steps=3", "monitor.decode_every=0"), resume=True)
    assert trainer.step == 2
    assert trainer.batches.fetched == 2  # the data position came back through the "data" component
    assert trainer.best_eval.best == float("inf")
    result = trainer.fit()
    assert result.final_step == 3 and (tmp_path / "checkpoints" / "latest").read_text() == "global_step3"
    resumed_again = Trainer(make_config(assets, tmp_path, "train.max_steps=3"), resume=True)  # the new layout
    assert resumed_again.step == 3 and resumed_again.batches.fetched == 3


def test_an_unknown_client_state_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match=r"not a ds_train checkpoint this version can resume"):
        component_states({"something": 1}, "somewhere", 0)
