"""The health checks: one enum that the config (`monitor.on_<check>`), the monitor, its messages and the doctor all
read, so a check is named, explained and labelled in one place."""

from __future__ import annotations

from enum import Enum


class HealthCheck(str, Enum):
    """A health check; its value is the name used in `monitor.on_<value>` and in `[health:<value>]` messages."""

    WHISPER_FEATURES = "whisper_features"
    CODEC_CODES = "codec_codes"
    GRAD_NORM = "grad_norm"
    NONFINITE_LOSS = "nonfinite_loss"
    PARAMS_UNCHANGED = "params_unchanged"
    LR_FLOOR = "lr_floor"
    REFERENCE_IGNORED = "reference_ignored"

    @property
    def config_key(self) -> str:
        return f"on_{self.value}"

    @property
    def likely_cause(self) -> str:
        return _LIKELY_CAUSE[self]

    @property
    def doctor_label(self) -> str:
        return _DOCTOR_LABEL[self]


_LIKELY_CAUSE = {
    HealthCheck.WHISPER_FEATURES: (
        "reference waveforms missing from the rows, or the collator/layout built no <|AUDIO|> span"
    ),
    HealthCheck.CODEC_CODES: (
        "codec codes not attached to the samples (encoding failed or was skipped) or every target masked"
    ),
    HealthCheck.GRAD_NORM: (
        "loss does not depend on any trainable weight (frozen model, detached graph) or gradients exploded"
    ),
    HealthCheck.NONFINITE_LOSS: (
        "bad input (NaN/inf audio or features), an exploding model, or too high a learning rate"
    ),
    HealthCheck.PARAMS_UNCHANGED: (
        "learning rate 0, frozen parameters, or an optimizer that does not hold these parameters"
    ),
    HealthCheck.LR_FLOOR: "the scheduler decays (or warms up) below train.min_lr; the floor holds the effective LR",
    HealthCheck.REFERENCE_IGNORED: (
        "the model does not use its reference: reference codes/Whisper span not reaching attention (masked, dropped or "
        "misplaced by the layout), too few speakers per text in the data, or too early in training"
    ),
}
# The doctor's row labels; the numbers are the seed report's five failures.
_DOCTOR_LABEL = {
    HealthCheck.WHISPER_FEATURES: "1. Whisper features non-empty, placed",
    HealthCheck.CODEC_CODES: "2. codec codes at audio positions",
    HealthCheck.GRAD_NORM: "3. grad norm finite and > 0",
    HealthCheck.LR_FLOOR: "4. learning rate > 0 and >= floor",
    HealthCheck.PARAMS_UNCHANGED: "parameters changed",
    HealthCheck.NONFINITE_LOSS: "loss finite",
    HealthCheck.REFERENCE_IGNORED: "reference used (conditioning gain)",
}


class HealthError(RuntimeError):
    """A check with policy "halt" failed on `halt_after` consecutive steps (or at start-up); `check` names it."""

    def __init__(self, check: HealthCheck, message: str) -> None:
        super().__init__(message)
        self.check = check
