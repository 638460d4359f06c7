"""Export: a checkpoint of any ZeRO stage (and a LoRA run, merged) -> a transformers folder + Whisper tower folder
that reproduce the trained model's outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import HiggsAudioV2ForConditionalGeneration

from ds_train.build import build_model, build_tokenizer
from ds_train.config import RunConfig
from ds_train.export import WHISPER_SUBDIR, export
from ds_train.trainer import Trainer
from tests.helpers import CONFIGS, make_config


def _ds_file(tmp_path: Path, stage: int) -> Path:
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["zero_optimization"] = {"stage": stage}
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps(ds))
    return path


def _reference_outputs(trainer: Trainer) -> tuple[dict, object, torch.Tensor]:
    batch = trainer.batches.next_batch()
    trainer.engine.eval()
    with torch.no_grad():
        out = trainer.engine(**batch)
        logits = trainer.engine.module.audio_logits(**batch).logits
    return batch, out, logits


def _reloaded(out_dir: Path, geometry):
    cfg = RunConfig()
    cfg.model.path = str(out_dir)
    cfg.whisper.path = str(out_dir / WHISPER_SUBDIR)
    model = build_model(cfg, build_tokenizer(cfg), geometry).eval()
    return model


def _assert_same(model, batch, ref, ref_logits) -> None:
    with torch.no_grad():
        got = model(**batch)
        logits = model.audio_logits(**batch).logits
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.codebook_losses, ref.codebook_losses, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.predicted_codes, ref.predicted_codes)


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_export_reproduces_the_trained_model(assets, tmp_path: Path, stage: int) -> None:
    trainer = Trainer(
        make_config(
            assets, tmp_path / "run", "train.max_steps=3", f"train.deepspeed_config={_ds_file(tmp_path, stage)}"
        )
    )
    trainer.fit()
    batch, ref, ref_logits = _reference_outputs(trainer)
    out = export(tmp_path / "run", tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / WHISPER_SUBDIR / "config.json").is_file() and (
        out / WHISPER_SUBDIR / "projector.safetensors"
    ).is_file()
    plain = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(out), local_files_only=True)
    assert plain.config.num_codebooks == trainer.geometry.num_codebooks
    _assert_same(_reloaded(out, trainer.geometry), batch, ref, ref_logits)


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_trains_and_exports_merged(assets, tmp_path: Path, stage: int) -> None:
    cfg = make_config(assets, tmp_path / "run", "train.max_steps=3", "model.lora_rank=4",
                      f"train.deepspeed_config={_ds_file(tmp_path, stage)}")  # fmt: skip
    trainer = Trainer(cfg)
    trainable = [n for n, p in trainer.engine.module.named_parameters() if p.requires_grad and n.startswith("llm.")]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.fit()
    batch, ref, ref_logits = _reference_outputs(trainer)
    out = export(tmp_path / "run", tmp_path / "export")
    assert json.loads((out / "ds_train_export.json").read_text())["lora_layers_merged"] == 20
    reloaded = _reloaded(out, trainer.geometry)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    _assert_same(reloaded, batch, ref, ref_logits)


def test_export_cli(assets, tmp_path: Path) -> None:
    from ds_train.trainer import train
    from tests.test_cli import _run

    train(make_config(assets, tmp_path / "run", "train.max_steps=1"))
    proc = _run([sys.executable, "-m", "ds_train", "export", "--checkpoint", str(tmp_path / "run" / "checkpoints"),
                 "--out", str(tmp_path / "exported")])  # fmt: skip
    assert "exported to" in proc.stdout and (tmp_path / "exported" / "config.json").is_file()
