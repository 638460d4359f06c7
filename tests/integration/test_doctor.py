"""The doctor: passes on a healthy run config (through the CLI) and fails naming the check on broken ones."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ds_train.doctor import run_doctor
from ds_train.monitor.health import HealthCheck
from ds_train.monitor.health_monitor import STEP_CHECKS
from tests.helpers import CONFIGS, make_config


def _failed(checks) -> dict[str, str]:
    return {c.name: c.detail for c in checks if c.ok is False}


def test_doctor_cli_passes_on_a_healthy_config(assets, tmp_path: Path) -> None:
    from tests.helpers import run_command

    proc = run_command([
        sys.executable, "-m", "ds_train", "doctor", "--config", str(CONFIGS / "demo.yaml"),
        f"data.manifest={assets.manifest}", f"data.codec_path={assets.codec_file}", "data.micro_batch_size=4",
        "whisper.features_on=device",  # what a GPU run does: features computed after the batch is moved
        f"data.eval_manifest={assets.manifest}",
    ])  # fmt: skip
    assert "all checks passed" in proc.stdout
    assert "PASS  eval data" in proc.stdout and "24 examples, 0 rejected rows" in proc.stdout
    assert re.search(r"PASS  evaluation\s.*eval loss \d+\.\d+, top-1 [\d.]+, 24 samples", proc.stdout)
    assert "features (4, 128, 3000)" in proc.stdout
    for check in STEP_CHECKS:
        assert f"PASS  {check.doctor_label}" in proc.stdout
    assert "PASS  label alignment" in proc.stdout and "5. logging decodes out-of-range ids safely" in proc.stdout


def test_doctor_fails_on_a_frozen_model(assets, tmp_path: Path) -> None:
    freeze = "model.freeze=llm,audio_ffn,audio_embed_head,text_embed_head,whisper_encoder,projector"
    failed = _failed(run_doctor(make_config(assets, tmp_path, freeze)))
    assert "every parameter is frozen" in failed[HealthCheck.GRAD_NORM.doctor_label]


def test_doctor_fails_on_a_warmup_that_starts_at_lr_zero(assets, tmp_path: Path) -> None:
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["scheduler"] = {
        "type": "WarmupLR",
        "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 10},
    }
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = make_config(assets, tmp_path, f"train.deepspeed_config={tmp_path / 'ds.json'}", "train.min_lr=0")
    failed = _failed(run_doctor(cfg))
    assert "step 1: the step ran at LR 0" in failed[HealthCheck.LR_LOW.doctor_label]
    assert HealthCheck.PARAMS_UNCHANGED.doctor_label in failed


def test_doctor_fails_when_codec_and_model_disagree(assets, tmp_path: Path) -> None:
    cfg = make_config(assets, tmp_path, "model.preset=tiny")
    cfg.data.codec_path = str(tmp_path / "missing.pth")
    failed = _failed(run_doctor(cfg))
    assert "does not exist" in failed["data pipeline + model build"]
