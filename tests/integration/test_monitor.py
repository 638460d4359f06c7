"""The monitor: each of the seed report's failures injected into a real DeepSpeed run must be reported, and training
must behave per policy (warn, or halt after `halt_after` consecutive steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from ds_train.model.parts import PART_NAMES
from ds_train.monitor.health import HealthError
from ds_train.monitor.safe_decode import INVALID_MARKER, safe_decode_text, sanitize_codes
from ds_train.trainer import Trainer
from tests.helpers import CONFIGS, inject, make_config, read_audio, read_scalars, read_text


def _trainer(assets, tmp_path: Path, *overrides: str, ds: str = "zero2_fp32.json") -> Trainer:
    return Trainer(make_config(assets, tmp_path, "monitor.halt_after=2", *overrides, ds=ds))


def test_loss_that_reaches_no_trainable_weight_gives_grad_norm_zero_and_halts(assets, tmp_path: Path) -> None:
    trainer = _trainer(assets, tmp_path, "train.max_steps=5")
    last = f"llm.model.layers.{trainer.engine.module.llm.config.num_hidden_layers - 1}.mlp."
    for name, param in trainer.engine.module.named_parameters():
        param.requires_grad_(name.startswith(last))  # in the graph, but no labelled position depends on it
    stats = trainer.train_step()
    assert stats.values["train/grad_norm"] == 0.0
    with pytest.raises(HealthError, match=r"grad_norm.*global gradient norm is 0.0.*frozen"):
        trainer.train_step()


def test_fully_frozen_model_stops_with_a_clear_message(assets, tmp_path: Path) -> None:
    trainer = _trainer(assets, tmp_path, "train.max_steps=5")
    for param in trainer.engine.module.parameters():
        param.requires_grad_(False)
    with pytest.raises(HealthError, match="depends on no trainable parameter"):
        trainer.train_step()


def test_lr_floor_holds_for_a_deepspeed_scheduler_decaying_to_1e_9(assets, tmp_path: Path) -> None:
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    # warmup from 0 (the trap: step 1 at LR 0) then decay to ~0
    ds["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 2, "total_num_steps": 4},
    }
    ds_file = tmp_path / "ds_sched.json"
    ds_file.write_text(json.dumps(ds))
    trainer = _trainer(
        assets, tmp_path / "run", "train.max_steps=6", "train.min_lr=1e-6", f"train.deepspeed_config={ds_file}"
    )
    lrs, scheduled = [], []
    for _ in range(6):
        values = trainer.train_step().values
        lrs.append(values["train/lr"])
        scheduled.append(values["train/lr_scheduled"])
    assert min(lrs) >= 1e-6
    assert scheduled[0] == 0.0 and lrs[0] == 1e-6  # warmup's first step would have run at LR 0
    assert min(scheduled) < 1e-6 and max(lrs) > 1e-4
    assert trainer.monitor.failures["lr_floor"] >= 2  # reported (policy warn), training went on
    assert trainer.monitor.failures["params_unchanged"] == 0


def test_nan_loss_skips_the_micro_batch_and_counts_it(assets, tmp_path: Path) -> None:
    trainer = _trainer(assets, tmp_path, "train.max_steps=3")

    def poison(index: int, batch: dict) -> dict:
        if index == 1:
            return {**batch, "whisper_input_features": torch.full_like(batch["whisper_input_features"], float("nan"))}
        return batch

    inject(trainer, poison)
    values = [trainer.train_step().values for _ in range(3)]
    assert trainer.step == 3 and trainer.monitor.skipped_micro_batches == 1
    assert trainer.monitor.failures["nonfinite_loss"] == 1
    assert all(math.isfinite(v["train/loss"]) and math.isfinite(v["train/grad_norm"]) for v in values)
    assert values[-1]["monitor/skipped_micro_batches"] == 1.0
    assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())


def test_repeated_nan_losses_halt(assets, tmp_path: Path) -> None:
    trainer = _trainer(assets, tmp_path, "train.max_steps=3")
    inject(trainer, lambda i, b: {**b, "whisper_input_features": b["whisper_input_features"] * float("nan")})
    with pytest.raises(HealthError, match="non-finite loss"):
        trainer.train_step()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("bf16", [False, True])
def test_global_and_part_grad_norms_under_every_zero_stage(assets, tmp_path: Path, stage: int, bf16: bool) -> None:
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["zero_optimization"] = {"stage": stage}
    ds["bf16"] = {"enabled": bf16}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    trainer = _trainer(assets, tmp_path, "train.max_steps=3", f"train.deepspeed_config={tmp_path / 'ds.json'}")
    assert trainer.engine.zero_optimization_stage() == stage
    values = trainer.train_step().values
    parts = {k.split("/")[2]: v for k, v in values.items() if k.startswith("train/grad_norm_part/")}
    assert set(parts) - {"total"} <= set(PART_NAMES) and {"audio_ffn", "whisper_encoder", "projector"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    assert math.sqrt(sum(v**2 for k, v in parts.items() if k != "total")) == pytest.approx(parts["total"], rel=1e-4)
    # step 1 always computes part norms; their total is the same pre-clipping norm DeepSpeed reports (where it does)
    assert parts["total"] == pytest.approx(values["train/grad_norm"], rel=1e-3)
    assert math.isfinite(trainer.train_step().values["train/grad_norm"])  # step 2: no part norms, still a norm


def test_samples_are_decoded_to_tensorboard(assets, tmp_path: Path) -> None:
    trainer = _trainer(assets, tmp_path, "train.max_steps=2", "monitor.decode_every=2")
    trainer.fit()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trainer.tb_dir), size_guidance={"tensors": 0})
    acc.Reload()
    audio = read_audio(trainer.tb_dir)
    assert {"samples/reference", "samples/target", "samples/predicted_teacher_forced"} <= set(audio)
    assert [e.step for e in audio["samples/target"]] == [1, 2] and audio["samples/target"][0].wav[:4] == b"RIFF"
    assert "samples/captions at the same step" in audio["samples/target"][0].description
    text = acc.Tensors("samples/target_text/text_summary")[0].tensor_proto.string_val[0].decode()
    rows = [json.loads(line) for line in assets.manifest.read_text().splitlines()]
    assert text in {row["text"] for row in rows}
    # each clip captioned at the same step: role, sample id, speaker, transcript
    cards = read_text(trainer.tb_dir)
    captions = cards["samples/captions"][1].splitlines()
    assert [line.split(" | ")[0] for line in captions[2:]] == ["| reference", "| target", "| predicted_teacher_forced"]
    row = next(r for r in rows if r["id"] == captions[3].split(" | ")[1])
    assert f"| target | {row['id']} | {row['speaker']} | {row['text']} |" in captions[3]
    assert f"| reference | {row['id']} | {row['speaker']} | {row['ref_text']} |" in captions[2]
    # the prompt card: transcripts plain, runs of a special token collapsed
    prompt = cards["samples/prompt"][1]
    assert f"reference transcript: {row['ref_text']}" in prompt and f"target text: {row['text']}" in prompt
    assert "<|AUDIO_OUT|> x " in prompt and "<|AUDIO_OUT|><|AUDIO_OUT|>" not in prompt
    assert read_scalars(trainer.tb_dir)["perf/samples_per_s"][2] > 0
    # A reference or target logged again (evaluations log the same eval sample each time) is not decoded again.
    logger, calls = trainer.samples, []
    decode = logger.codec.decode
    logger.codec.decode = lambda codes: calls.append(codes.shape) or decode(codes)
    codes = torch.randint(0, logger.geometry.codec_codebook_size, (logger.geometry.num_codebooks, 20))
    first, again = logger._decode(codes, remember=True), logger._decode(codes.clone(), remember=True)
    assert torch.equal(first, again) and len(calls) == 1
    assert torch.equal(logger._decode(codes, remember=False), first) and len(calls) == 2


@pytest.mark.parametrize(
    "ids",
    [
        torch.tensor([5, -100, 7, -5, 10**9, 3]),
        torch.tensor([[1.0, float("nan")], [float("inf"), 2.5]]),
        torch.tensor([], dtype=torch.long),
        torch.tensor([2**62, -(2**62)]),
        [1, "x", None, 2],
        "not ids",
    ],
)
def test_safe_decode_never_raises(ids) -> None:
    tok = build_tiny_tokenizer()
    decoded = safe_decode_text(tok, ids, pad_id=tok.pad_token_id)
    assert isinstance(decoded.text, str)


def test_safe_decode_marks_and_counts_bad_ids() -> None:
    tok = build_tiny_tokenizer()
    good = tok("hello", add_special_tokens=False)["input_ids"]
    decoded = safe_decode_text(
        tok, torch.tensor([*good, -100, -3, len(tok), tok.pad_token_id]), pad_id=tok.pad_token_id
    )
    assert decoded.text == "hello" + INVALID_MARKER * 2
    assert decoded.invalid == 2 and decoded.dropped == 2
    codes, bad = sanitize_codes(torch.tensor([[0, 1025, -1], [5, 1023, 2**40]]), codebook_size=1024)
    assert codes.tolist() == [[0, 0, 0], [5, 1023, 0]] and bad == 3


def test_deepspeed_monitor_config_is_passed_through(assets, tmp_path: Path) -> None:
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["csv_monitor"] = {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "run"}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    trainer = _trainer(assets, tmp_path / "out", "train.max_steps=2", f"train.deepspeed_config={tmp_path / 'ds.json'}")
    trainer.fit()
    written = {p.name for p in (tmp_path / "csv").rglob("*.csv")}
    assert {"ds_train_train_loss.csv", "ds_train_train_grad_norm.csv", "Train_Samples_lr.csv"} <= written
    rows = next((tmp_path / "csv").rglob("ds_train_train_loss.csv")).read_text().splitlines()
    assert len(rows) == 3  # header + steps 1, 2


def test_reference_free_dataset_with_whisper_on_is_refused_loudly(assets, tmp_path: Path, caplog) -> None:
    rows = [json.loads(line) for line in assets.manifest.read_text().splitlines()[:4]]
    base = assets.manifest.parent
    for row in rows:
        row.update(ref_audio="", ref_text="", audio=str(base / row["audio"]))
    manifest = tmp_path / "noref.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="no usable rows.*4 rejected"):
        Trainer(make_config(assets, tmp_path / "out", f"data.manifest={manifest}"))
    assert caplog.text.count("missing or empty fields: ref_audio, ref_text") == 4
