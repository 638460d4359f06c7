"""The Whisper alignment phase (whisper.align_steps, issue 12 §4) through the real trainer and DeepSpeed engine:
during the phase only the projector moves (the LLM stays bit-identical even with weight decay), at whisper.align_lr,
with no LR-floor, lr_low or params_unchanged finding; after it everything the config unfreezes trains on the normal
schedule; a resume in the middle of the phase continues exactly as the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ds_train.components.align import check_align
from ds_train.components.schedule import lr_at
from ds_train.config import ConfigError, resolve_deepspeed_config
from ds_train.model.parts import part_of
from ds_train.monitor.health import HealthCheck
from ds_train.trainer import Trainer
from tests.helpers import CONFIGS, make_config

ALIGN_STEPS, MAX_STEPS, ALIGN_LR, LR = 2, 4, 2e-3, 3e-3


def _config(assets, prepared: Path, out: Path, *extra: str):
    return make_config(assets, out, f"data.prepared={prepared}", "data.micro_batch_size=2",
                       f"whisper.align_steps={ALIGN_STEPS}", f"whisper.align_lr={ALIGN_LR}", f"train.lr={LR}",
                       f"train.max_steps={MAX_STEPS}", "train.warmup_steps=1", "train.weight_decay=0.1",
                       "train.keep_last=0", "train.tensorboard=false", "monitor.decode_every=0",
                       "monitor.part_norms_every=1", *extra)  # fmt: skip


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], part: str | None = None) -> list[str]:
    """Parameters (of `part`, or all but the projector when None) that changed."""
    names = [n for n in before if (part_of(n) == part if part else part_of(n) != "projector")]
    return [n for n in names if not torch.equal(before[n], after[n])]


def test_align_phase_holds_the_llm_then_trains_everything_and_resumes_mid_phase(
    assets, prepared_corpus, tmp_path: Path
) -> None:
    trainer = Trainer(_config(assets, prepared_corpus, tmp_path / "run"))
    groups = trainer.optimizer.param_groups
    assert [g["align_role"] for g in groups] == ["align", "held"] and groups[1]["weight_decay"] > 0
    start = _params(trainer)
    losses, params = {}, {}
    for step in range(1, MAX_STEPS + 1):
        values = trainer.train_step().values
        losses[step], params[step] = values["train/loss"], _params(trainer)
        trainer.save()
        expected_lr = ALIGN_LR if step <= ALIGN_STEPS else lr_at(step - 1 - ALIGN_STEPS, LR, 1e-5, 1, 2)
        assert values["train/lr"] == pytest.approx(expected_lr), step
        if step <= ALIGN_STEPS:
            assert _moved(start, params[step], "projector")  # the projector aligns ...
            assert not _moved(start, params[step]), step  # ... while every other weight, encoder included, is held
    after = _moved(params[ALIGN_STEPS], params[ALIGN_STEPS + 1])
    assert any(part_of(n) == "llm_attention_text_ffn" for n in after) and any(n.startswith("whisper.") for n in after)
    assert _moved(params[ALIGN_STEPS], params[ALIGN_STEPS + 1], "projector")
    for check in (HealthCheck.LR_FLOOR, HealthCheck.LR_LOW, HealthCheck.PARAMS_UNCHANGED, HealthCheck.GRAD_NORM):
        assert trainer.monitor.failures.get(check, 0) == 0, (check, trainer.monitor.findings)

    # Resume from the checkpoint of step 1, inside the phase: the scheduler state comes back from the checkpoint.
    (tmp_path / "run" / "checkpoints" / "latest").write_text("global_step1")
    resumed = Trainer(_config(assets, prepared_corpus, tmp_path / "run"), resume=True)
    assert resumed.step == 1
    for step in range(2, MAX_STEPS + 1):
        assert resumed.train_step().values["train/loss"] == losses[step], step
        now = _params(resumed)
        assert all(torch.equal(now[n], params[step][n]) for n in now), step


def test_align_encoder_trains_the_encoder_with_the_projector(assets, prepared_corpus, tmp_path: Path) -> None:
    trainer = Trainer(_config(assets, prepared_corpus, tmp_path / "run", "whisper.align_encoder=true"))
    start = _params(trainer)
    trainer.train_step()
    moved = _moved(start, _params(trainer))
    assert moved and all(part_of(n) == "whisper_encoder" for n in moved), moved


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["whisper.align_steps=300", "train.max_steps=300"], "must be < train.max_steps"),
        (["whisper.align_steps=2", "whisper.enabled=false"], "needs whisper.enabled=true"),
        (["whisper.align_steps=2", "whisper.align_encoder=true", "whisper.trainable=false"], "align_encoder=true"),
        (["whisper.align_steps=2", "whisper.align_lr=0"], "align_lr must be > 0"),
        (["whisper.align_steps=-1"], "align_steps must be >= 0"),
    ],
)
def test_align_config_errors_name_the_key(assets, tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(assets, tmp_path, *overrides)


def test_a_deepspeed_scheduler_with_an_align_phase_is_a_config_error(assets, tmp_path: Path) -> None:
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}
    path = tmp_path / "ds_with_scheduler.json"
    path.write_text(json.dumps(ds))
    cfg = make_config(assets, tmp_path, "whisper.align_steps=2", f"train.deepspeed_config={path}")
    with pytest.raises(ConfigError, match=r'own "scheduler".*whisper.align_steps=2'):
        check_align(cfg, resolve_deepspeed_config(cfg, 1))
    check_align(make_config(assets, tmp_path, f"train.deepspeed_config={path}"), ds)  # no phase: its own schedule
