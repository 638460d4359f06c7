"""The health checks: one enum that the config (`monitor.on_<check>`), the monitor, its messages and the doctor all
read, so a check is named, explained and labelled in one place."""

from __future__ import annotations

from enum import Enum


class HealthCheck(str, Enum):
    """A health check; its value is the name used in `monitor.on_<value>` and in `[health:<value>]` messages."""

    WHISPER_FEATURES = "whisper_features"
    REFERENCE_CODES = "reference_codes"
    CODEC_CODES = "codec_codes"
    GRAD_NORM = "grad_norm"
    NONFINITE_LOSS = "nonfinite_loss"
    PARAMS_UNCHANGED = "params_unchanged"
    LR_FLOOR = "lr_floor"
    LR_LOW = "lr_low"
    DECODE_IDS = "decode_ids"
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
        "reference waveforms missing, silent or not turned into features, the layout built no <|AUDIO|> span, or "
        "the embedding hook that places Whisper embeddings is not active (model wrapped or hook removed)"
    ),
    HealthCheck.REFERENCE_CODES: (
        "the reference's codec codes were not put into the prompt (reference not encoded, or the layout/collator "
        "dropped its <|AUDIO_OUT|> span): the model learns plain TTS, not cloning"
    ),
    HealthCheck.CODEC_CODES: "the target's codec codes are missing or every target label is masked",
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
    HealthCheck.LR_LOW: (
        "train.lr too small, train.warmup_steps longer than the run, or something other than the schedule (an "
        "optimizer or scheduler state loaded from elsewhere, a DeepSpeed scheduler) holding the LR down"
    ),
    HealthCheck.DECODE_IDS: (
        "token ids outside the tokenizer's vocabulary or the codec's codebook (a tokenizer or codec that differs "
        "from the one the data was prepared with, or corrupt rows); decoding them would crash"
    ),
    HealthCheck.REFERENCE_IGNORED: (
        "the model does not use its reference: reference codes/Whisper span not reaching attention (masked, dropped or "
        "misplaced by the layout), too few speakers per text in the data, or too early in training"
    ),
}
# The doctor's row labels; the numbers are the seed report's five failures.
_DOCTOR_LABEL = {
    HealthCheck.WHISPER_FEATURES: "1. Whisper features present, not silent, placed",
    HealthCheck.REFERENCE_CODES: "2. reference codes in every prompt",
    HealthCheck.CODEC_CODES: "2. target codes labelled",
    HealthCheck.GRAD_NORM: "3. grad norm finite and > 0",
    HealthCheck.LR_LOW: "4. learning rate follows the schedule",
    HealthCheck.LR_FLOOR: "4. learning rate >= floor",
    HealthCheck.DECODE_IDS: "5. token ids decodable",
    HealthCheck.PARAMS_UNCHANGED: "parameters changed",
    HealthCheck.NONFINITE_LOSS: "loss finite",
    HealthCheck.REFERENCE_IGNORED: "reference used (conditioning gain)",
}


class HealthError(RuntimeError):
    """A check with policy "halt" failed on `halt_after` consecutive steps (or at start-up); `check` names it."""

    def __init__(self, check: HealthCheck, message: str) -> None:
        super().__init__(message)
        self.check = check
