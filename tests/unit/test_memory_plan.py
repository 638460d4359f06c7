"""Run configs in ds_configs/ load and validate, and the memory plan of `python -m ds_train info --config` says each
fine-tuning recipe fits the GPUs it is written for; the model-state and activation formulas behind it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from ds_train.config import load_run_config
from ds_train.info import memory_plan
from ds_train.model.memory import GIB, LayerShape, activation_gib, model_states, zero_memory_per_gpu
from tests.helpers import CONFIGS, run_command

RUN_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
RECIPES = [p for p in RUN_CONFIGS if p.name.startswith("finetune_")]
# Each recipe's header names the GPUs it is written for: "info --config <it> --gpus N --gpu-memory-gib G".
TARGET = re.compile(r"info --config (\S+) --gpus (\d+) --gpu-memory-gib (\d+)")


def _target(recipe: Path) -> tuple[int, float]:
    found = TARGET.search(recipe.read_text())
    assert found and found.group(1) == f"ds_configs/{recipe.name}", f"{recipe.name}: header lacks its info command"
    return int(found.group(2)), float(found.group(3))


def test_there_are_the_four_recipes() -> None:
    assert {p.stem for p in RECIPES} == {
        "finetune_8x80gb_full", "finetune_1x80gb_offload", "finetune_1x24gb_lora", "finetune_8x80gb_whisper",
    }  # fmt: skip


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_run_config_loads_and_names_an_existing_deepspeed_config(path: Path) -> None:
    cfg = load_run_config(path)
    ds = Path(cfg.train.deepspeed_config)
    assert ds.is_file(), f"{path.name}: train.deepspeed_config {ds} does not exist"
    json.loads(ds.read_text())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_fits_the_gpus_it_is_written_for(recipe: Path) -> None:
    gpus, gib = _target(recipe)
    cfg = load_run_config(recipe)
    assert not cfg.whisper.enabled or cfg.whisper.align_steps > 0, "Whisper on needs an alignment phase"
    plan = memory_plan(cfg, gpus, gib, source=recipe.name)
    assert plan.fits, plan.text
    assert plan.total_gib > 0.5 * gib, f"{recipe.name} leaves more than half the GPU idle:\n{plan.text}"
    # the same recipe on one GPU of a quarter of the memory does not fit, and the plan says so
    small = memory_plan(cfg, 1, gib / 4, source=recipe.name)
    assert small.fits is False and "does not fit" in small.text


def test_info_command_prints_the_plan_and_the_verdict() -> None:
    recipe = CONFIGS / "finetune_1x24gb_lora.yaml"
    proc = run_command([sys.executable, "-m", "ds_train", "info", "--config", str(recipe), "--gpus", "1",
                        "--gpu-memory-gib", "24"])  # fmt: skip
    out = proc.stdout
    assert "ZeRO-2 bf16" in out and "activation checkpointing: on" in out and "(LoRA rank 16)" in out
    assert re.search(r"total per GPU\s+\d+\.\d+", out) and "fits (" in out
    proc = run_command([sys.executable, "-m", "ds_train", "info", "--config", str(recipe), "--gpus", "1",
                        "--gpu-memory-gib", "12", "train.activation_checkpointing=false"])  # fmt: skip
    assert "does not fit" in proc.stdout and "activation checkpointing: off" in proc.stdout


def test_model_states_follow_the_zero_formulas() -> None:
    p = 1_000_000_000
    mem = zero_memory_per_gpu(p, 8)
    assert mem["zero0"] == pytest.approx(16 * p / GIB)
    assert mem["zero1"] == pytest.approx((4 * p + 12 * p / 8) / GIB)
    assert mem["zero2"] == pytest.approx((2 * p + 14 * p / 8) / GIB)
    assert mem["zero3"] == pytest.approx(16 * p / 8 / GIB)
    # frozen weights (LoRA's base) cost only their bf16 copy; fp32 is 4 + 4 + 8, and 4 more under ZeRO-1/2
    lora = model_states(10_000_000, p, 2, 1)
    assert lora.weights == pytest.approx(2 * (p + 10_000_000)) and lora.optimizer == pytest.approx(12e7)
    assert model_states(p, 0, 0, 1, bf16=False).gpu_gib == pytest.approx(16 * p / GIB)
    fp32_zero2 = model_states(p, 0, 2, 1, bf16=False, reduce_bucket=0)
    assert fp32_zero2.gpu_gib == pytest.approx(20 * p / GIB)  # + the cloned fp32 master
    # ZeRO-2 gathers gradients in one reduce bucket, at most as large as the model
    assert model_states(p, 0, 2, 1, reduce_bucket=5e7).grads == pytest.approx(2 * p + 2 * 5e7)
    assert model_states(1000, 0, 2, 1, reduce_bucket=5e7).grads == pytest.approx(2 * 1000 + 2 * 1000)
    # offload: the optimizer partition (+ fp32 grads) moves to host RAM; ZeRO-3 params leave only the live window
    off = model_states(p, 0, 3, 1, offload_optimizer=True, offload_param=True, max_live_parameters=1e8)
    assert off.optimizer == 0 and off.weights == pytest.approx(2e8) and off.host == pytest.approx(16 * p + 2 * p)


def test_activation_checkpointing_keeps_only_layer_inputs() -> None:
    shape = LayerShape(layers=28, hidden=3072, kv_width=1024, ffn=8192)
    full, ckpt = activation_gib(shape, 1000, False), activation_gib(shape, 1000, True)
    assert full == pytest.approx(1000 * 28 * 2 * (10 * 3072 + 2 * 1024 + 4 * 8192) / GIB)
    assert ckpt == pytest.approx(1000 * (28 * 2 * 3072 + 2 * (10 * 3072 + 2 * 1024 + 4 * 8192)) / GIB)
    assert activation_gib(shape, 2000, False) == pytest.approx(2 * full)


def test_estimate_matches_the_recorded_h200_peak_of_the_1b_preset() -> None:
    """docs/BENCHMARKS.md "GPU figures, first measurement": the 1b preset (2.07 B parameters), ZeRO-2 bf16 on one
    H200, micro-batch 4 x 1,921 tokens, no checkpointing, peaked at 43.5 GiB allocated."""
    states = model_states(2_070_000_000, 0, 2, 1, reduce_bucket=5e7).gpu_gib  # zero2_bf16.json's bucket
    act = activation_gib(LayerShape(16, 2048, 8 * 64, 8192, head_logits=8 * 1026), 4 * 1921, False)
    assert states + act == pytest.approx(43.5, rel=0.03)
