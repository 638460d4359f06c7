"""Export: a checkpoint of any ZeRO stage (and a LoRA run, merged) -> a transformers folder + Whisper tower folder
that reproduce the trained model's outputs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from transformers import HiggsAudioV2ForConditionalGeneration

from ds_train.components.checkpoint import load_checkpoint_model
from ds_train.config import RunConfig
from ds_train.export import WHISPER_SUBDIR, export
from ds_train.model.build import build_model, build_tokenizer
from ds_train.monitor.health import HealthCheck
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


VARIANTS = {
    "full": (),
    "whisper_frozen": ("whisper.trainable=false",),
    "lora": ("model.lora_rank=4",),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_export_reproduces_the_checkpoint(assets, tmp_path: Path, stage: int, variant: str) -> None:
    """Every ZeRO stage x {full fine-tuning, frozen Whisper, LoRA}: frozen weights (Whisper's `embed_positions` always,
    the whole encoder when frozen, every LoRA base weight) must come through too. Under ZeRO-1 DeepSpeed's fp32
    reconstruction leaves them out; one optimizer step is enough to make the trained weights differ from init."""
    cfg = make_config(assets, tmp_path / "run", "train.max_steps=1",
                      f"train.deepspeed_config={_ds_file(tmp_path, stage)}", *VARIANTS[variant])  # fmt: skip
    trainer = Trainer(cfg)
    module = trainer.engine.module
    if variant == "lora":
        trainable = [n for n, p in module.named_parameters() if p.requires_grad and n.startswith("llm.")]
        assert trainable and all("lora_" in n for n in trainable)
    if variant == "whisper_frozen":
        assert not any(p.requires_grad for p in module.whisper.encoder.parameters())
    trainer.fit()
    batch, ref, ref_logits = _reference_outputs(trainer)
    out = export(tmp_path / "run", tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / WHISPER_SUBDIR / "config.json").is_file() and (
        out / WHISPER_SUBDIR / "projector.safetensors"
    ).is_file()
    plain = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(out), local_files_only=True)
    assert plain.config.num_codebooks == trainer.geometry.num_codebooks
    merged = json.loads((out / "ds_train_export.json").read_text())["lora_layers_merged"]
    assert merged == (20 if variant == "lora" else 0)
    reloaded = _reloaded(out, trainer.geometry)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    _assert_same(reloaded, batch, ref, ref_logits)


def test_export_cli(assets, tmp_path: Path) -> None:
    from ds_train.trainer import train
    from tests.helpers import run_command

    train(make_config(assets, tmp_path / "run", "train.max_steps=1"))
    ckpts = str(tmp_path / "run" / "checkpoints")
    proc = run_command([sys.executable, "-m", "ds_train", "export", "--checkpoint", ckpts,
                        "--out", str(tmp_path / "exported")])  # fmt: skip
    assert "exported to" in proc.stdout and (tmp_path / "exported" / "config.json").is_file()


def test_zero0_bf16_reads_the_fp32_masters_in_export_and_params_unchanged(assets, tmp_path: Path) -> None:
    """Issue 22 §4: under ZeRO-0 in bf16 (DeepSpeed's FP16_UnfusedOptimizer) the trained weights are the fp32 masters
    in the optimizer. Export wrote the bf16 module weights (7e-5 off) and params_unchanged read them: at LR 1e-4 an
    update smaller than bf16's resolution left them equal and the check fired although the masters moved."""
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["zero_optimization"] = {"stage": 0}
    ds["bf16"] = {"enabled": True}
    ds.pop("fp16", None)
    (tmp_path / "zero0_bf16.json").write_text(json.dumps(ds))
    cfg = make_config(assets, tmp_path / "run", "train.max_steps=2", "train.lr=1e-4", "train.min_lr=1e-6",
                      "train.warmup_steps=1", f"train.deepspeed_config={tmp_path / 'zero0_bf16.json'}",
                      "monitor.on_params_unchanged=halt", "monitor.halt_after=1", "monitor.part_norms_every=1",
                      "whisper.enabled=false")  # fmt: skip
    trainer = Trainer(cfg)
    assert type(trainer.optimizer).__name__ == "FP16_UnfusedOptimizer"
    trainer.fit()  # raised HealthError(params_unchanged) before
    assert trainer.monitor.failures[HealthCheck.PARAMS_UNCHANGED] == 0
    masters = {n: trainer.monitor.masters[id(p)] for n, p in trainer.engine.module.named_parameters()
               if id(p) in trainer.monitor.masters}  # fmt: skip
    assert masters
    model, *_ = load_checkpoint_model(tmp_path / "run")
    exported = dict(model.named_parameters())
    worst = max(float((exported[n].detach() - m).abs().max()) for n, m in masters.items())
    assert worst == 0.0, worst


@pytest.mark.parametrize("whisper", [False, True])
def test_exported_folder_is_self_contained_and_clones_as_its_checkpoint(assets, tmp_path, whisper: bool) -> None:
    """The exported folder, moved elsewhere, holds everything `generate` and `evaluate` need (model, tokenizer, codec,
    Whisper tower, run config): greedy generation from it writes the very audio the checkpoint does. transformers' own
    class (and its tokenizer loader) load it and give our model's logits on a voice-cloning prompt."""
    from transformers import AutoTokenizer

    from ds_train.evaluation.eval_list import evaluate_list
    from ds_train.inference.generate import VoiceCloner, build_prompt, clone_voice
    from tests.helpers import run_command

    run = tmp_path / "run"
    Trainer(make_config(assets, run, "train.max_steps=2", f"whisper.enabled={str(whisper).lower()}",
                        "train.tensorboard=false")).fit()  # fmt: skip
    export(run, tmp_path / "first_place")
    moved = tmp_path / "elsewhere" / "exported"
    moved.parent.mkdir()
    shutil.move(tmp_path / "first_place", moved)
    assert (moved / "codec" / assets.codec_file.name).read_bytes() == assets.codec_file.read_bytes()
    assert (moved / WHISPER_SUBDIR / "projector.safetensors").is_file() == whisper

    ref = sorted((assets.manifest.parent / "wavs").glob("*.wav"))[0]
    words = ["--ref-audio", str(ref), "--ref-text", "Some words.", "--text", "Other words.", "--max-seconds", "1"]
    from_ckpt = clone_voice(run, ref, "Some words.", "Other words.", tmp_path / "ckpt.wav", max_seconds=1.0)
    out = tmp_path / "exported.wav"
    proc = run_command([sys.executable, "-m", "ds_train", "generate", "--checkpoint", str(moved), *words,
                        "--out", str(out)])  # fmt: skip
    assert out.read_bytes() == from_ckpt.path.read_bytes()
    # generate says what it produced: the duration, and whether the model stopped or hit --max-seconds
    assert f"wrote {out}: {from_ckpt.seconds:.2f} s of audio; " in proc.stdout
    ending = "the model ended it (audio EOS)" if from_ckpt.stopped else "cut at --max-seconds 1: the model did not"
    assert ending in proc.stdout

    cloner = VoiceCloner(moved)  # its model, tokenizer, Whisper tower and codec all come from inside the folder
    paths = [cloner.cfg.model.path, cloner.cfg.data.codec_path, *([cloner.cfg.whisper.path] if whisper else [])]
    assert all(Path(p).resolve().is_relative_to(moved.resolve()) for p in paths), paths
    if whisper:
        return
    # evaluate takes the folder too (same audio as from the checkpoint)
    (tmp_path / "list").mkdir()
    meta = tmp_path / "list" / "meta.lst"
    meta.write_text(f"u1|Some words.|{ref}|Other words.\n")
    evaluate_list(moved, meta, tmp_path / "eval_exported", max_seconds=1.0)
    evaluate_list(run, meta, tmp_path / "eval_ckpt", max_seconds=1.0)
    assert (tmp_path / "eval_exported" / "wavs" / "u1.wav").read_bytes() == (
        tmp_path / "eval_ckpt" / "wavs" / "u1.wav"
    ).read_bytes()
    # transformers' own class and tokenizer loader, offline, on a prompt built by our layout
    ours = VoiceCloner(run)
    wave, rate = sf.read(str(ref), dtype="float32")
    (ref_codes,) = ours.codec.encode([torch.from_numpy(wave)], rate)
    prompt = build_prompt(ours.layout, ours.collator, "Some words.", ref_codes, "Other words.")
    tokenizer = AutoTokenizer.from_pretrained(str(moved), local_files_only=True)
    assert tokenizer("Other words.")["input_ids"] == ours.layout.tokenizer("Other words.")["input_ids"]
    plain = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(moved), local_files_only=True).eval()
    keys = ("input_ids", "attention_mask", "audio_input_ids", "audio_input_ids_mask")
    with torch.no_grad():
        theirs = plain(**{k: prompt.batch[k] for k in keys}).logits
        expected = ours.model.audio_logits(**prompt.batch).logits
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)
