"""Step metrics: derives throughput, MFU, memory, data wait and gradient clipping from what a step measured, and owns
where and how often they go (TensorBoard on rank 0, with its custom-scalars layout and run card; one console line per
`train.log_every` steps; DeepSpeed's own monitors)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_train.config import RunConfig
from ds_train.model.flops import llm_flops_per_token, peak_flops
from ds_train.model.loss import LossSums
from ds_train.monitor.dashboard import COUNTER_GROUPS, hparams, run_card, scalar_layout

log = logging.getLogger("ds_train")
GAIN = "cloning/conditioning_gain"  # named in ds_train/evaluation/conditioning.py, which this layer may not import


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def clip_scale(grad_norm: float, threshold: float) -> float:
    """The factor DeepSpeed's gradient clipping multiplied the gradients by: threshold / (norm + 1e-6) when the
    pre-clip norm exceeds `threshold`, else 1 (also with clipping off, threshold <= 0)."""
    if threshold <= 0 or not grad_norm > threshold:
        return 1.0
    return threshold / (grad_norm + 1e-6)


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


@contextlib.contextmanager
def announced(what: str, verbose: bool = True) -> Iterator[None]:
    """Logs `what ...` before a long phase (evaluation, generation, a checkpoint save) and its duration after it,
    so that a silent minute does not look like a hang."""
    if verbose:
        log.info("%s ...", what)
    started = time.perf_counter()
    yield
    if verbose:
        log.info("%s: done in %.1f s", what, time.perf_counter() - started)


@dataclass
class StepMeasurement:
    """What one optimizer step measured; `sums` are already reduced over ranks; `epoch` counts epochs done (with
    the fraction of the current one)."""

    step: int
    sums: LossSums
    grad_norm: float
    lr: float
    lr_scheduled: float
    seconds: float
    data_wait_seconds: float
    part_norms: dict[str, float] | None = None
    epoch: float = 0.0


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
        self.started = time.monotonic()
        self.first_step: int | None = None  # the step before the first one this process logged (for the ETA)
        self.tags: set[str] = set()  # scalar tags written so far, and the counters among them that are not 0
        self.nonzero: set[str] = set()

    def step_values(self, m: StepMeasurement, counters: dict[str, float]) -> dict[str, float]:
        """train/*, perf/*, train/grad_norm_part/* and the given health/* and monitor/* counters of one step."""
        s = m.sums
        values = s.metrics("train")
        values.update({
            "train/grad_norm": m.grad_norm,
            "train/grad_clip_scale": clip_scale(m.grad_norm, self.grad_clip),
            "train/lr": m.lr,
            "train/lr_scheduled": m.lr_scheduled,
            "train/epoch": m.epoch,
            "perf/step_time_s": m.seconds,
            "perf/data_wait_frac": m.data_wait_seconds / m.seconds,
            "perf/tokens_per_s": s.tokens / m.seconds,
            "perf/samples_per_s": s.samples / m.seconds,
            "perf/audio_seconds_per_s": float(s.count[0]) / self.frame_rate / m.seconds,
            "perf/peak_memory_gib": peak_memory_gib(),
            **counters,
        })  # fmt: skip
        for part, value in (m.part_norms or {}).items():
            values[f"train/grad_norm_part/{part}"] = value
        if self.peak_flops:
            seq = s.tokens / max(1.0, s.samples)
            flops = llm_flops_per_token(self.model, seq) * s.tokens
            values["perf/mfu"] = flops / m.seconds / (self.peak_flops * self.world_size)
        return values

    def log(self, step: int, values: dict[str, float]) -> None:
        self._scalars(step, values)
        if self.first_step is None:
            self.first_step = step - 1
        if step % self.log_every == 0 or step == 1 or step == self.max_steps:
            log.info(self.console_line(step, values))

    def console_line(self, step: int, values: dict[str, float]) -> str:
        """step/total | epoch | elapsed, ETA | loss (audio, top-1) | grad norm (clipping) | LR | tokens/s | data wait.
        The ETA extrapolates the wall time per step since this process started (evaluations and saves included)."""
        elapsed = time.monotonic() - self.started
        done = step - (self.first_step if self.first_step is not None else step - 1)
        eta = elapsed / max(1, done) * (self.max_steps - step)
        scale = values["train/grad_clip_scale"]
        clipped = f" (clipped x{scale:.2f})" if scale < 1 else ""
        return (
            f"step {step:>5}/{self.max_steps} | epoch {values['train/epoch']:.2f} | {clock(elapsed)} elapsed, "
            f"ETA {clock(eta)} | loss {values['train/loss']:.4f} (audio {values['train/audio_loss']:.4f}, top-1 "
            f"{values['train/audio_top1']:.3f}) | grad norm {values['train/grad_norm']:.3g}{clipped} | lr "
            f"{values['train/lr']:.3g} | {values['perf/tokens_per_s']:.0f} tok/s | step "
            f"{values['perf/step_time_s'] * 1000:.0f} ms, data wait {values['perf/data_wait_frac'] * 100:.0f}%"
        )

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        self._scalars(step, values)
        log.info(
            "eval  %5d | loss %.4f | audio %.4f | acc %.3f | %d samples in %.1f s", step, values["eval/loss"],
            values["eval/audio_loss"], values["eval/audio_top1"], values["eval/samples"], values["eval/time_s"],
        )  # fmt: skip
        if GAIN in values:
            parts = [f"{k} {values[f'{GAIN}_{k}']:.4f}" for k in ("codes", "whisper") if f"{GAIN}_{k}" in values]
            log.info("eval  %5d | conditioning gain %.4f%s", step, values[GAIN],
                     f" ({', '.join(parts)})" if parts else "")  # fmt: skip

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars to TensorBoard (and DeepSpeed's monitors) without a console line."""
        self._scalars(step, values)

    def log_run_card(self, cfg: RunConfig, paths: dict[str, Path | str | None], device: str) -> None:
        """Step 0: the run config, versions and resolved paths as the text card `run/config`, and the config as
        TensorBoard hparams (with train/loss and eval/loss as its metrics)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.writer.add_text("run/config", run_card(cfg, paths, self.world_size, device), 0)
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summary(hparams(cfg), {"train/loss": 0.0, "eval/loss": 0.0}):
            file_writer.add_summary(summary, 0)

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self._update_layout(step, values)
        if self.ds_monitor is not None:
            # the DeepSpeed JSON's own monitors (csv, wandb, comet, tensorboard) get every metric too
            self.ds_monitor.write_events([(f"ds_train/{k}", v, step) for k, v in values.items()])

    def _update_layout(self, step: int, values: dict[str, float]) -> None:
        """Rewrites the custom-scalars layout when a new tag appears or a counter leaves 0 (TensorBoard shows the
        latest one)."""
        nonzero = {k for k, v in values.items() if k.split("/")[0] in COUNTER_GROUPS and v != 0}
        if set(values) <= self.tags and nonzero <= self.nonzero:
            return
        self.tags |= set(values)
        self.nonzero |= nonzero
        from torch.utils.tensorboard.summary import custom_scalars

        self.writer._get_file_writer().add_summary(custom_scalars(scalar_layout(self.tags, self.nonzero)), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
