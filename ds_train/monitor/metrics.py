"""Step metrics: derives throughput, MFU, memory and data wait from what a step measured, and owns where and how
often they go (TensorBoard on rank 0, one console line per `train.log_every` steps, DeepSpeed's own monitors)."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_train.model.flops import llm_flops_per_token, peak_flops
from ds_train.model.loss import LossSums

log = logging.getLogger("ds_train")


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass
class StepMeasurement:
    """What one optimizer step measured; `sums` are already reduced over ranks."""

    step: int
    sums: LossSums
    grad_norm: float
    lr: float
    lr_scheduled: float
    seconds: float
    data_wait_seconds: float
    part_norms: dict[str, float] | None = None


class MetricsProcessor:
    def __init__(
        self, tb_dir: Path, enabled: bool, log_every: int, max_steps: int, world_size: int, frame_rate: float,
        grad_clip: float, model: torch.nn.Module, ds_monitor=None, purge_step: int | None = None,
    ) -> None:  # fmt: skip
        """`enabled`: this rank writes TensorBoard (rank 0). `purge_step`: on a resume, events at and after this step
        (written by the interrupted run after its checkpoint) are dropped, so redone steps do not appear twice."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)
        self.log_every, self.max_steps, self.world_size = log_every, max_steps, world_size
        self.frame_rate, self.grad_clip, self.model = frame_rate, grad_clip, model
        self.ds_monitor = ds_monitor if ds_monitor is not None and ds_monitor.enabled else None
        self.peak_flops = peak_flops()

    def step_values(self, m: StepMeasurement, counters: dict[str, float]) -> dict[str, float]:
        """train/*, perf/*, grad_norm_part/* and the given monitor/* counters of one step."""
        s = m.sums
        values = s.metrics("train")
        values.update({
            "train/grad_norm": m.grad_norm,
            "train/grad_clip": self.grad_clip,
            "train/lr": m.lr,
            "train/lr_scheduled": m.lr_scheduled,
            "perf/step_time_s": m.seconds,
            "perf/data_wait_frac": m.data_wait_seconds / m.seconds,
            "perf/tokens_per_s": s.tokens / m.seconds,
            "perf/samples_per_s": s.samples / m.seconds,
            "perf/audio_seconds_per_s": float(s.count[0]) / self.frame_rate / m.seconds,
            "perf/peak_memory_gib": peak_memory_gib(),
            **counters,
        })  # fmt: skip
        for part, value in (m.part_norms or {}).items():
            values[f"grad_norm_part/{part}"] = value
        if self.peak_flops:
            seq = s.tokens / max(1.0, s.samples)
            flops = llm_flops_per_token(self.model, seq) * s.tokens
            values["perf/mfu"] = flops / m.seconds / (self.peak_flops * self.world_size)
        return values

    def log(self, step: int, values: dict[str, float]) -> None:
        self._scalars(step, values)
        if step % self.log_every == 0 or step == 1 or step == self.max_steps:
            log.info(
                "step %5d/%d | loss %.4f | audio %.4f | acc %.3f | gnorm %.3g | lr %.3g | %.0f tok/s | step %.0f ms "
                "(data %.0f%%)", step, self.max_steps, values["train/loss"], values["train/audio_loss"],
                values["train/audio_top1"], values["train/grad_norm"], values["train/lr"], values["perf/tokens_per_s"],
                values["perf/step_time_s"] * 1000, values["perf/data_wait_frac"] * 100,
            )  # fmt: skip

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        self._scalars(step, values)
        log.info(
            "eval  %5d | loss %.4f | audio %.4f | acc %.3f | %d samples in %.1f s", step, values["eval/loss"],
            values["eval/audio_loss"], values["eval/audio_top1"], values["eval/samples"], values["eval/time_s"],
        )  # fmt: skip
        if "eval/conditioning_gain" in values:
            parts = [f"{k} {values[f'eval/conditioning_gain_{k}']:.4f}" for k in ("codes", "whisper")
                     if f"eval/conditioning_gain_{k}" in values]  # fmt: skip
            log.info("eval  %5d | conditioning gain %.4f%s", step, values["eval/conditioning_gain"],
                     f" ({', '.join(parts)})" if parts else "")  # fmt: skip

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars to TensorBoard (and DeepSpeed's monitors) without a console line."""
        self._scalars(step, values)

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        if self.ds_monitor is not None:
            # the DeepSpeed JSON's own monitors (csv, wandb, comet, tensorboard) get every metric too
            self.ds_monitor.write_events([(f"ds_train/{k}", v, step) for k, v in values.items()])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
