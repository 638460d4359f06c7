"""DeepSpeed training through the real engine: a healthy first step, TensorBoard scalars, exact resume."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from ds_train.model.build import build_model
from ds_train.model.flops import llm_flops_per_token
from ds_train.trainer import Trainer, train
from tests.helpers import REQUIRED_SCALARS, make_config, read_scalars


@pytest.mark.parametrize("ds", ["zero2_fp32.json", "zero2_bf16.json"])
def test_first_optimizer_step_is_healthy(assets, tmp_path: Path, ds: str) -> None:
    trainer = Trainer(make_config(assets, tmp_path, "train.max_steps=5", ds=ds))
    module = trainer.engine.module
    before = {n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad}
    stats = trainer.train_step()
    assert stats.step == 1
    assert stats.values["train/lr"] > 0
    assert math.isfinite(stats.values["train/grad_norm"]) and stats.values["train/grad_norm"] > 0
    changed = {n for n, p in module.named_parameters() if n in before and not torch.equal(before[n], p.float())}
    # Without a text head no labelled position reads the last decoder layer's text FFN, so it gets no gradient.
    last = f"llm.model.layers.{module.llm.config.num_hidden_layers - 1}."
    unreachable = {n for n in before if n.startswith((last + "mlp.", last + "post_attention_layernorm."))}
    assert unreachable and unreachable.isdisjoint(changed)
    if ds == "zero2_fp32.json":
        assert changed == set(before) - unreachable, f"unchanged: {sorted(set(before) - unreachable - changed)[:5]}"
    else:
        # bf16 weights round away updates smaller than their precision (e.g. norms at 1.0); matrices must move
        matrices = {n for n in before if before[n].dim() >= 2} - unreachable
        assert matrices <= changed, f"unchanged after step 1: {sorted(matrices - changed)[:5]}"
    assert trainer.engine.bfloat16_enabled() == (ds == "zero2_bf16.json")


def test_resume_reproduces_uninterrupted_losses(assets, tmp_path: Path) -> None:
    full = train(make_config(assets, tmp_path / "full", "train.max_steps=6", "train.save_every=3"))
    assert sorted(full.losses) == [1, 2, 3, 4, 5, 6]

    scalars = read_scalars(full.tensorboard_dir)
    assert REQUIRED_SCALARS <= set(scalars)
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert scalars["train/loss"][6] == pytest.approx(full.losses[6], rel=1e-6)

    # A second run that only has the step-3 checkpoint, as if the first had died after saving it.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full.checkpoint_dir / "global_step3", resumed_dir / "checkpoints" / "global_step3")
    (resumed_dir / "checkpoints" / "latest").write_text("global_step3")
    resumed = train(make_config(assets, resumed_dir, "train.max_steps=6", "train.save_every=3"), resume=True)
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == full.losses[step], (step, resumed.losses[step], full.losses[step])


def test_resume_without_checkpoint_is_a_clear_error(assets, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(make_config(assets, tmp_path, "train.max_steps=2"), resume=True)


@pytest.mark.parametrize("ds", ["zero1_bf16.json", "zero3_bf16.json", "zero3_offload_bf16.json"])
def test_shipped_deepspeed_configs_train(assets, tmp_path: Path, ds: str) -> None:
    cfg = make_config(assets, tmp_path, "train.max_steps=2", f"data.eval_manifest={assets.manifest}", ds=ds)
    trainer = Trainer(cfg)
    values = [trainer.train_step().values for _ in range(2)]
    assert all(math.isfinite(v["train/loss"]) and v["train/grad_norm"] > 0 for v in values)
    assert trainer.engine.zero_optimization_stage() == int(ds[4])
    # Evaluation runs under every stage (ZeRO-3 gathers the partitioned weights for the forward).
    assert math.isfinite(trainer.evaluate()["eval/loss"])
    # MFU counts the full model even where ZeRO-3 has partitioned the parameters away.
    unpartitioned = build_model(trainer.cfg, trainer.tokenizer, trainer.geometry)
    assert llm_flops_per_token(trainer.engine.module, 100) == llm_flops_per_token(unpartitioned, 100) > 0


def test_whisper_features_on_the_training_device_train_identically(assets, tmp_path: Path) -> None:
    losses = {}
    for where in ("loader", "device"):
        trainer = Trainer(make_config(assets, tmp_path / where, "train.max_steps=2", f"whisper.features_on={where}",
                                      "data.num_workers=0"))  # fmt: skip
        assert trainer.data.collator.whisper_on_device == (where == "device")
        losses[where] = [trainer.train_step().values["train/loss"] for _ in range(2)]
    assert losses["device"] == pytest.approx(losses["loader"], rel=1e-6)
