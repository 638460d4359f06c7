"""Per-step scalars to TensorBoard (rank 0) and one concise console line per logging interval."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("ds_train")


class MetricsLogger:
    def __init__(self, logdir: Path | None, enabled: bool) -> None:
        self.writer = None
        if enabled and logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def console(self, step: int, max_steps: int, values: dict[str, float]) -> None:
        line = (
            f"step {step:>5}/{max_steps} | loss {values['train/loss']:.4f} | audio {values['train/audio_loss']:.4f}"
            f" | acc {values['train/audio_top1']:.3f} | gnorm {values['train/grad_norm']:.3g}"
            f" | lr {values['train/lr']:.3g} | {values['perf/tokens_per_s']:.0f} tok/s"
            f" | step {values['perf/step_time_s'] * 1000:.0f} ms (data {values['perf/data_wait_frac'] * 100:.0f}%)"
        )
        log.info(line)

    def console_eval(self, step: int, values: dict[str, float]) -> None:
        log.info(
            "eval  %5d | loss %.4f | audio %.4f | acc %.3f | %d samples in %.1f s", step, values["eval/loss"],
            values["eval/audio_loss"], values["eval/audio_top1"], values["eval/samples"], values["eval/time_s"],
        )  # fmt: skip

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
