"""`python -m ds_train doctor --config run.yaml`: build the run's data pipeline and model, run the training's own health
checks (ds_train/monitor/health_monitor.py) on real micro-batches of the run's data and one real optimizer step, and
print a pass/fail table, one row per check by name, of what the seed report's failures (and a few more things) look
like on this run.

It writes nothing into the run's output directory (it uses a temporary one) and exits non-zero if any check fails.
"""

from __future__ import annotations

import math
import platform
import sys
import tempfile
from dataclasses import dataclass

import deepspeed
import torch
import transformers

from data_pipeline.types import IGNORE_INDEX
from ds_train.config import RunConfig
from ds_train.monitor.health import HealthCheck, HealthError
from ds_train.monitor.health_monitor import STEP_CHECKS
from ds_train.monitor.safe_decode import safe_decode_text
from ds_train.trainer import Trainer

SAFE_DECODING = "5. logging decodes out-of-range ids safely"
SCREENED_MICRO_BATCHES = 8  # real micro-batches the batch checks see besides the step's own


@dataclass
class Check:
    name: str
    ok: bool | None  # None: information only
    detail: str


def _health_failure(err: HealthError) -> Check:
    """A check that stops the run before a step completes (e.g. nothing trainable) is reported under its own name."""
    return Check(err.check.doctor_label, False, str(err))


def _label_alignment(trainer, batch: dict) -> Check:
    """Our loss (shift inside, once) must equal transformers' own HiggsAudioV2 loss on the same batch and embeddings."""
    model = trainer.engine.module
    with torch.no_grad():
        ours = model(**batch)
        theirs = model.audio_logits(**batch).loss
    a, b = float(ours.audio_loss), float(theirs)
    tol = 2e-2 if trainer.engine.bfloat16_enabled() else 1e-4
    frames = batch["audio_input_ids"][batch["audio_input_ids_mask"]]
    labels = batch["audio_labels"][batch["audio_input_ids_mask"]]
    aligned = bool(((labels == frames) | (labels == IGNORE_INDEX)).all())
    ok = aligned and math.isclose(a, b, rel_tol=tol)
    return Check(
        "label alignment (t predicts t+1)", ok, f"loss {a:.4f} vs transformers {b:.4f}; labels aligned: {aligned}"
    )


def _health_rows(trainer, batch: dict, values: dict[str, float]) -> list[Check]:
    """One row per step health check, as the monitor judged the real micro-batches and the step."""
    cfg = trainer.cfg
    found = {f.check: f.render() for f in trainer.monitor.findings}
    feats = batch.get("whisper_input_features")
    grad_norm, lr, loss = values["train/grad_norm"], values["train/lr"], values["train/loss"]
    screened = f"{trainer.batches.fetched} micro-batches checked, {trainer.monitor.dropped_samples} samples dropped"
    passed = {
        HealthCheck.WHISPER_FEATURES: "Whisper off" if not cfg.whisper.enabled else (
            f"features {tuple(feats.shape) if feats is not None else None}, not silent, all <|AUDIO|> placed; "
            + screened
        ),
        HealthCheck.REFERENCE_CODES: f"reference codes before every target; {screened}",
        HealthCheck.CODEC_CODES: f"{int(batch['audio_input_ids_mask'].sum())} frames in the first micro-batch, "
        "labelled targets in every sample",
        HealthCheck.DECODE_IDS: "every text id inside the tokenizer, every code inside the codebook",
        HealthCheck.GRAD_NORM: f"{grad_norm:.4g}, clip {cfg.train.gradient_clipping}",
        HealthCheck.LR_LOW: f"step-1 LR {lr:.3g}, train.lr {cfg.train.lr:g}, warmup {cfg.train.warmup_steps} of "
        f"{cfg.train.max_steps} steps",
        HealthCheck.LR_FLOOR: f"step-1 LR {lr:.3g} (scheduler asked {values['train/lr_scheduled']:.3g}), floor "
        f"{cfg.train.min_lr:g}",
        HealthCheck.PARAMS_UNCHANGED: "yes",
        HealthCheck.NONFINITE_LOSS: f"{loss:.4f}",
    }  # fmt: skip
    return [Check(check.doctor_label, check not in found, found.get(check, passed[check])) for check in STEP_CHECKS]


def run_doctor(cfg: RunConfig) -> list[Check]:
    cfg = cfg.with_values({
        # collect every finding instead of stopping at the first
        **{f"monitor.{check.config_key}": "warn" for check in HealthCheck},
        "monitor.part_norms_every": 1, "monitor.decode_every": 0, "train.tensorboard": False,
        "train.output_dir": tempfile.mkdtemp(prefix="ds_train_doctor_"),
    })  # fmt: skip
    checks = [
        Check("versions", None, f"python {platform.python_version()}, torch {torch.__version__}, deepspeed "
              f"{deepspeed.__version__}, transformers {transformers.__version__}"),
    ]  # fmt: skip
    try:
        trainer = Trainer(cfg)
    except HealthError as err:
        checks.append(_health_failure(err))
        return checks
    except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
        checks.append(Check("data pipeline + model build", False, f"{type(err).__name__}: {err}"))
        return checks
    engine = trainer.engine
    accel = deepspeed.get_accelerator().device_name()
    if torch.cuda.is_available():
        accel += f" ({torch.cuda.get_device_name(0)})"
    zero = trainer.ds_config.get("zero_optimization", {})
    offload = [k for k in ("offload_optimizer", "offload_param") if zero.get(k, {}).get("device", "none") != "none"]
    checks += [
        Check("accelerator / world size", None, f"{accel}, {trainer.world_size} rank(s)"),
        Check("deepspeed config", None,
              f"ZeRO-{engine.zero_optimization_stage()}, {'bf16' if engine.bfloat16_enabled() else 'fp32'}, "
              f"micro-batch {engine.train_micro_batch_size_per_gpu()}, accumulation "
              f"{engine.gradient_accumulation_steps()}, clipping {engine.gradient_clipping()}, "
              f"offload {offload or 'none'}"),
        Check("data", len(trainer.data.dataset) > 0,
              f"{len(trainer.data.dataset)} examples, {len(trainer.data.dataset.rejects)} rejected rows"),
    ]  # fmt: skip
    held_out = trainer.data.eval_dataset
    if held_out is not None:
        detail = f"{len(held_out)} examples, {len(held_out.rejects)} rejected rows"
        checks.append(Check("eval data", len(held_out) > 0, detail))
    batch = trainer.prepare_batch(trainer.batches.next_batch())
    checks.append(_label_alignment(trainer, batch))
    for _ in range(SCREENED_MICRO_BATCHES):  # the batch checks run on each (failures are reported by the step)
        trainer.batches.next_batch()
    try:
        stats = trainer.train_step()
    except HealthError as err:
        checks.append(_health_failure(err))
        return checks
    checks += _health_rows(trainer, batch, stats.values)
    if trainer.evaluator is not None:
        try:
            ev = trainer.evaluate()
            checks.append(Check("evaluation", math.isfinite(ev["eval/loss"]) and ev["eval/samples"] > 0,
                                f"eval loss {ev['eval/loss']:.4f}, top-1 {ev['eval/audio_top1']:.3f}, "
                                f"{ev['eval/samples']:.0f} samples in {ev['eval/time_s']:.1f} s"))  # fmt: skip
        except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
            checks.append(Check("evaluation", False, f"{type(err).__name__}: {err}"))
    garbage = torch.tensor([-100, -1, 10**12, len(trainer.tokenizer), 0])
    try:
        safe_decode_text(trainer.tokenizer, batch["input_ids"][0])
        decoded = safe_decode_text(trainer.tokenizer, garbage)
        checks.append(Check(SAFE_DECODING, True, f"{decoded.invalid} invalid ids marked"))
    except Exception as err:  # noqa: BLE001
        checks.append(Check(SAFE_DECODING, False, f"{type(err).__name__}: {err}"))
    return checks


def print_table(checks: list[Check], out=sys.stdout) -> bool:
    """Prints the table; returns True when nothing failed."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        status = "info" if c.ok is None else ("PASS" if c.ok else "FAIL")
        print(f"{status:<5} {c.name:<{width}}  {c.detail}", file=out)
    failed = [c.name for c in checks if c.ok is False]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}", file=out)
    return not failed
