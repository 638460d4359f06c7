"""The seed report's five failures, each injected into a real DeepSpeed run (tiny model, CPU), under both policies:
with "warn" the run goes on to its last step, drops what it must (failing samples never reach the model), counts the
check under `health/<check>` in TensorBoard and names the samples in its log; with "halt" it stops after
`monitor.halt_after` consecutive failing steps with a message naming the check, the step, the samples and the likely
cause. Deleting any check makes its two tests fail."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from data_pipeline.types import IGNORE_INDEX
from ds_train.monitor.batch_checks import collate_screened
from ds_train.monitor.health import HealthCheck, HealthError
from ds_train.trainer import Trainer
from tests.helpers import inject, make_config, read_scalars


def _every_batch_row0(change: Callable[[dict], None]) -> Callable[[Trainer], None]:
    """Break sample 0 of every micro-batch (the others stay usable, so steps still complete)."""

    def install(trainer: Trainer) -> None:
        def tap(index: int, batch: dict) -> dict:
            batch = dict(batch)
            change(batch)
            return batch

        inject(trainer, tap)

    return install


def _empty_features_on_even_batches(trainer: Trainer) -> None:
    """The seed's [0, 128, 3000]: every other micro-batch arrives without any reference features."""

    def tap(index: int, batch: dict) -> dict:
        if index % 2:
            return batch
        return {
            **batch, "whisper_input_features": torch.zeros(0, 128, 3000),
            "whisper_attention_mask": torch.zeros(0, 3000, dtype=torch.long),
        }  # fmt: skip

    inject(trainer, tap)


def _silent_reference(batch: dict) -> None:
    """Sample 0's reference replaced by digital silence, as the loader's log-mel front end renders it."""
    chunks = batch["whisper_chunk_sample"] == 0
    features = batch["whisper_input_features"].clone()
    features[chunks] = -1.5
    batch["whisper_input_features"] = features


def _reference_codes_missing(batch: dict) -> None:
    """Sample 0's prompt keeps its reference span but carries no codes in it (the seed's missing DAC conditioning)."""
    first_target = int((batch["audio_labels"][0] != IGNORE_INDEX).any(-1).nonzero()[0])
    codes = batch["audio_input_ids"].clone()
    codes[0, :first_target] = codes.max()  # the stream EOS id: a marker, not a code
    batch["audio_input_ids"] = codes


def _text_id_out_of_range(batch: dict) -> None:
    ids = batch["input_ids"].clone()
    ids[0, 2] = 10**6  # past the tokenizer (and the embedding): would crash decoding, and the forward
    batch["input_ids"] = ids


def _remove_whisper_hook(trainer: Trainer) -> None:
    trainer.engine.module.audio_in_hook.remove()  # Whisper runs, but its embeddings land nowhere


def _gradient_reaches_no_trainable_weight(trainer: Trainer) -> None:
    last = f"llm.model.layers.{trainer.engine.module.llm.config.num_hidden_layers - 1}.mlp."
    for name, param in trainer.engine.module.named_parameters():
        param.requires_grad_(name.startswith(last))  # in the graph, but no labelled position depends on it


def _infinite_gradient(trainer: Trainer) -> None:
    """Every backward leaves an infinite gradient on the audio head (DeepSpeed then skips the optimizer step)."""
    head = trainer.engine.module.llm.audio_lm_head.weight
    head.register_hook(lambda grad: torch.full_like(grad, float("inf")))


class _HoldDown:
    """A scheduler that sets every param group's LR to 1e-7 at each step (e.g. state from another run)."""

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer

    def step(self, *args, **kwargs) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = 1e-7

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _scheduler_holding_lr_down(trainer: Trainer) -> None:
    """Something other than the configured schedule sets the LR; the floor (train.min_lr) lifts it to 1e-5 only."""
    trainer.engine.lr_scheduler = _HoldDown(trainer.optimizer)


@dataclass(frozen=True)
class Injection:
    check: HealthCheck
    install: Callable[[Trainer], None] | None
    overrides: tuple[str, ...] = ()
    names_samples: bool = True  # a per-sample failure: the samples are named and dropped
    halts_at: int = 2  # with halt_after=2
    reason: str = ""


INJECTIONS = {
    "empty_features": Injection(
        HealthCheck.WHISPER_FEATURES, _empty_features_on_even_batches, reason=r"\(0, 128, 3000\)"
    ),
    "silent_reference": Injection(HealthCheck.WHISPER_FEATURES, _every_batch_row0(_silent_reference), reason="silent"),
    "whisper_not_placed": Injection(
        HealthCheck.WHISPER_FEATURES, _remove_whisper_hook, reason="received Whisper embeddings"
    ),
    "reference_codes_missing": Injection(
        HealthCheck.REFERENCE_CODES, _every_batch_row0(_reference_codes_missing), reason="no reference codec codes"
    ),
    "grad_norm_zero": Injection(
        HealthCheck.GRAD_NORM, _gradient_reaches_no_trainable_weight, ("monitor.on_params_unchanged=warn",),
        names_samples=False, reason="global gradient norm is 0.0",
    ),  # fmt: skip
    "grad_norm_infinite": Injection(
        HealthCheck.GRAD_NORM, _infinite_gradient, ("monitor.on_params_unchanged=warn",), names_samples=False,
        reason="global gradient norm is inf",
    ),  # fmt: skip
    "lr_configured_too_small": Injection(
        HealthCheck.LR_LOW, None, ("train.lr=1e-7", "train.min_lr=0"), names_samples=False, reason="too small"
    ),
    "warmup_longer_than_run": Injection(
        HealthCheck.LR_LOW, None, ("train.warmup_steps=200",), names_samples=False, reason="never exceeds"
    ),
    "lr_held_down": Injection(
        HealthCheck.LR_LOW, _scheduler_holding_lr_down, names_samples=False, halts_at=3,
        reason="while the configured schedule gives",
    ),  # fmt: skip
    "ids_out_of_range": Injection(
        HealthCheck.DECODE_IDS, _every_batch_row0(_text_id_out_of_range), reason="outside the tokenizer"
    ),
}


def _trainer(assets, prepared: Path, tmp_path: Path, injection: Injection, policy: str, max_steps: int) -> Trainer:
    trainer = Trainer(make_config(
        assets, tmp_path, f"data.prepared={prepared}", f"train.max_steps={max_steps}", "monitor.halt_after=2",
        "monitor.decode_every=0", f"monitor.{injection.check.config_key}={policy}", *injection.overrides,
    ))  # fmt: skip
    if injection.install is not None:
        injection.install(trainer)
    return trainer


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_warn_keeps_training_counts_and_names_the_samples(
    assets, prepared_corpus: Path, tmp_path: Path, name: str, caplog
) -> None:
    injection = INJECTIONS[name]
    trainer = _trainer(assets, prepared_corpus, tmp_path, injection, "warn", max_steps=3)
    with caplog.at_level("WARNING", logger="ds_train"):
        result = trainer.fit()
    assert result.final_step == 3
    assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())  # nothing reached the weights
    failing_steps = read_scalars(trainer.tb_dir)[f"health/{injection.check.value}"]
    assert failing_steps[3] >= 2, failing_steps
    assert re.search(rf"\[health:{injection.check.value}\] step \d+: .*{injection.reason}", caplog.text)
    if injection.names_samples:
        finding = next(f for f in trainer.monitor.findings if f.check is injection.check)
        assert finding.sample_ids and all(i in caplog.text for i in finding.sample_ids)
        if injection.install is not _remove_whisper_hook:  # dropped before the model, counted
            assert read_scalars(trainer.tb_dir)["monitor/dropped_samples"][3] >= 2


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_halt_stops_after_halt_after_steps_naming_check_step_samples_cause(
    assets, prepared_corpus: Path, tmp_path: Path, name: str
) -> None:
    injection = INJECTIONS[name]
    trainer = _trainer(assets, prepared_corpus, tmp_path, injection, "halt", max_steps=6)
    with pytest.raises(HealthError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert caught.value.check is injection.check
    assert message.startswith(f"[health:{injection.check.value}] step {injection.halts_at}: "), message
    assert re.search(injection.reason, message) and "likely cause" in message
    assert f"failed 2 consecutive steps; stopping (set monitor.{injection.check.config_key}=warn" in message
    if injection.names_samples:
        assert "; samples: " in message
    assert trainer.step == injection.halts_at


def test_eval_rows_failing_a_check_are_skipped_and_counted(assets, prepared_corpus: Path, tmp_path: Path) -> None:
    """An eval sample with an id out of range would crash the evaluation's forward: it is skipped, named and counted
    (eval/bad_samples), and the evaluation goes on over the other samples."""
    trainer = Trainer(make_config(assets, tmp_path, f"data.prepared={prepared_corpus}",
                                  f"data.eval_prepared={prepared_corpus}", "train.tensorboard=false"))  # fmt: skip
    clean = trainer.evaluate()
    collate, calls = trainer.data.collator, iter(range(1 << 20))

    def tampered(examples: list) -> dict:
        batch = collate(examples)
        if next(calls) == 0:  # sample 0 of the first eval micro-batch
            _text_id_out_of_range(batch)
        return batch

    trainer.evaluator.collate = functools.partial(collate_screened, tampered, trainer._batch_rules())
    values = trainer.evaluate()
    assert values["eval/bad_samples"] == 1.0 and clean["eval/bad_samples"] == 0.0
    assert values["eval/samples"] == clean["eval/samples"] - 1 and math.isfinite(values["eval/loss"])
