"""Training health: the five silent failures of the seed report made loud.

The monitor observes the engine through a narrow interface (batches, model outputs, the optimizer's param groups,
gradient norms) and changes two things: it drops samples that fail a batch check (ds_train/monitor/batch_checks.py)
before the model sees them, and it clamps every param group's LR to the floor after the scheduler steps.
Each check has a policy: "warn" logs every failing step (and counts it under `health/<check>` in TensorBoard);
"halt" raises `HealthError` after `halt_after` consecutive failing steps. Messages name the check, the step, the
samples and the likely cause.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ds_train.components.agreement import gather_objects
from ds_train.components.schedule import ROLE_ALIGN, group_lr_at, highest_lr, is_held
from ds_train.config import MonitorSection
from ds_train.model.parts import part_of
from ds_train.monitor.batch_checks import BatchRules, find_row_failures, without_rows
from ds_train.monitor.grad_norms import full_param
from ds_train.monitor.health import HealthCheck, HealthError

log = logging.getLogger("ds_train")


@dataclass
class Finding:
    check: HealthCheck
    step: int
    message: str
    sample_ids: tuple[str, ...]

    def render(self) -> str:
        ids = ", ".join(self.sample_ids[:8]) + (" ..." if len(self.sample_ids) > 8 else "")
        return (
            f"[health:{self.check.value}] step {self.step}: {self.message}"
            + (f"; samples: {ids}" if ids else "")
            + f"; likely cause: {self.check.likely_cause}"
        )


def apply_lr_floor(optimizer: torch.optim.Optimizer, min_lr: float) -> tuple[float, float]:
    """Clamp every param group's LR to >= min_lr, except groups the Whisper alignment phase holds at 0 (is_held).
    -> (lowest scheduled LR, lowest effective LR) of the groups that train."""
    groups = [group for group in optimizer.param_groups if not is_held(group)]
    scheduled = min(group["lr"] for group in groups)
    for group in groups:
        if not group["lr"] >= min_lr:  # also catches NaN
            group["lr"] = min_lr
    return scheduled, min(group["lr"] for group in groups)


@dataclass(frozen=True)
class ScheduleReference:
    """The built-in schedule the run config describes (train.lr, min_lr, warmup_steps, max_steps), for lr_low."""

    peak: float
    min_lr: float
    warmup: int
    total: int
    align_steps: int = 0  # whisper.align_steps: the first steps train only the Whisper projector, at align_lr
    align_lr: float = 0.0

    def at(self, step: int) -> float:
        """LR of optimizer step `step` (1-based) for the groups that train (the align group during alignment)."""
        return group_lr_at(
            ROLE_ALIGN, step - 1, self.peak, self.min_lr, self.warmup, self.total, self.align_steps, self.align_lr
        )

    def highest(self) -> float:
        """Highest LR of the main schedule (after any alignment phase)."""
        return highest_lr(self.peak, self.min_lr, self.warmup, self.total - self.align_steps)


# Checks reported once per optimizer step (others, like those of an evaluation, report on their own schedule).
STEP_CHECKS = (
    HealthCheck.WHISPER_FEATURES, HealthCheck.REFERENCE_CODES, HealthCheck.CODEC_CODES, HealthCheck.DECODE_IDS,
    HealthCheck.NONFINITE_LOSS, HealthCheck.GRAD_NORM, HealthCheck.PARAMS_UNCHANGED, HealthCheck.LR_FLOOR,
    HealthCheck.LR_LOW,
)  # fmt: skip
MAX_UNUSABLE_MICRO_BATCHES = 100  # fully dropped micro-batches in a row before the run stops whatever the policy


def first_findings(per_rank: list[dict]) -> dict:
    """{check: (message, sample ids)} of every rank -> for each check, the first rank's that saw it, naming the rank."""
    found: dict = {}
    for rank, findings in enumerate(per_rank):
        for check, (message, ids) in findings.items():
            if check not in found:
                where = f" [rank {rank}]" if len(per_rank) > 1 else ""
                found[check] = (message + where, ids)
    return found


class HealthMonitor:
    """Screens each micro-batch (dropping failing samples), collects per-micro-batch observations for a step, then
    reports each check once per optimizer step, the same way on every rank."""

    def __init__(
        self, cfg: MonitorSection, rules: BatchRules, device: torch.device, schedule: ScheduleReference | None
    ) -> None:
        self.cfg = cfg
        self.rules = rules
        self.device = device
        self.schedule = schedule  # None when the DeepSpeed JSON brings its own scheduler
        # fp32 masters that DeepSpeed's accessor does not reach (ZeRO-0 in bf16): params_unchanged reads these
        self.masters: dict[int, torch.Tensor] = {}
        self.consecutive: dict[HealthCheck, int] = defaultdict(int)
        self.failures: dict[HealthCheck, int] = defaultdict(int)
        self.skipped_micro_batches = 0
        self.dropped_samples = 0
        self.findings: list[Finding] = []
        self._pending: dict[HealthCheck, list] = {}
        self._snapshots: dict[str, torch.Tensor] = {}
        self._unusable_in_a_row = 0

    def state_dict(self) -> dict:
        """Counters carried across a resume (per-check failures, consecutive failures, skipped micro-batches and
        dropped samples)."""
        return {
            "failures": {c.value: n for c, n in self.failures.items()},
            "consecutive": {c.value: n for c, n in self.consecutive.items()},
            "skipped_micro_batches": self.skipped_micro_batches,
            "dropped_samples": self.dropped_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        self.failures.update({HealthCheck(c): n for c, n in state.get("failures", {}).items()})
        self.consecutive.update({HealthCheck(c): n for c, n in state.get("consecutive", {}).items()})
        self.skipped_micro_batches = int(state.get("skipped_micro_batches", 0))
        self.dropped_samples = int(state.get("dropped_samples", 0))

    def counters(self) -> dict[str, float]:
        """TensorBoard counters: failing steps per check, skipped micro-batches, dropped samples."""
        return {
            **{f"health/{c.value}": float(self.failures.get(c, 0)) for c in HealthCheck},
            "monitor/skipped_micro_batches": float(self.skipped_micro_batches),
            "monitor/dropped_samples": float(self.dropped_samples),
        }

    # -- per micro-batch -------------------------------------------------------------------------------------------
    def screen(self, batch: dict) -> dict:
        """A collated CPU micro-batch -> the same batch without the samples that fail a batch check (see
        batch_checks), each failure noted for this step's report. All samples failing -> {"empty": True}."""
        failures = find_row_failures(batch, self.rules)
        if not failures:
            self._unusable_in_a_row = 0
            return batch
        for failure in failures:
            self._pending.setdefault(failure.check, []).append((failure.reason, (failure.sample_id,)))
            log.warning("dropped sample %s: [health:%s] %s", failure.sample_id, failure.check.value, failure.reason)
        self.dropped_samples += len(failures)
        kept = without_rows(batch, failures)
        if kept is not None:
            self._unusable_in_a_row = 0
            return kept
        self._unusable_in_a_row += 1
        if self._unusable_in_a_row >= MAX_UNUSABLE_MICRO_BATCHES:
            check = failures[-1].check
            raise HealthError(check, (
                f"[health:{check.value}] the last {self._unusable_in_a_row} micro-batches had no usable sample; "
                f"last: {failures[-1].sample_id}: {failures[-1].reason}; likely cause: {check.likely_cause}"
            ))  # fmt: skip
        return {"empty": True, "sample_ids": []}

    def observe_batch(self, batch: dict, out) -> None:
        """After the forward: with Whisper on, every <|AUDIO|> position must have received a Whisper embedding."""
        if not self.rules.whisper:
            return
        wanted = (batch["input_ids"] == self.rules.audio_in_token_id).sum(1).cpu()  # [B]
        placed = out.audio_in_placed.cpu()
        short = (placed != wanted).nonzero().flatten().tolist()
        if short:
            ids = tuple(batch["sample_ids"][r] for r in short)
            message = (
                f"{int(placed.sum())} of {int(wanted.sum())} <|AUDIO|> positions received Whisper embeddings; the "
                "model trained on placeholder embeddings there"
            )
            self._pending.setdefault(HealthCheck.WHISPER_FEATURES, []).append((message, ids))

    def observe_nonfinite_loss(self, batch: dict, loss: float) -> None:
        self.skipped_micro_batches += 1
        ids = tuple(batch.get("sample_ids", ()))
        message = f"loss is {loss}; the micro-batch was skipped (no backward, no update)"
        self._pending.setdefault(HealthCheck.NONFINITE_LOSS, []).append((message, ids))

    # -- around the optimizer step ---------------------------------------------------------------------------------
    def snapshot_params(self, module: torch.nn.Module, grad_norms: dict[str, float] | None) -> None:
        """Before the step: remember the smallest parameter of each part whose gradient is non-zero."""
        self._snapshots = {}
        if grad_norms is None:
            return
        smallest: dict[str, tuple[int, str, torch.nn.Parameter]] = {}
        for name, param in module.named_parameters():
            part = part_of(name)
            if param.requires_grad and grad_norms.get(part, 0.0) > 0:
                numel = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
                if part not in smallest or numel < smallest[part][0]:
                    smallest[part] = (numel, name, param)
        for _, name, param in smallest.values():
            self._snapshots[name] = full_param(param, self.masters).detach().clone()

    def end_step(self, step: int, module: torch.nn.Module, grad_norm: float, lr_scheduled: float, lr: float) -> None:
        """After the step: report every step check once (pass or fail) so consecutive counts are per step. Ranks
        agree on which checks failed (a halt must stop every rank, not leave the others waiting in a collective)."""
        params = dict(module.named_parameters())
        unchanged = [
            n for n, before in self._snapshots.items() if torch.equal(before, full_param(params[n], self.masters))
        ]
        pending, self._pending = self._pending, {}
        found: dict[HealthCheck, tuple[str, tuple[str, ...]]] = {}
        for check, items in pending.items():
            reasons = list(dict.fromkeys(reason for reason, _ in items))
            message = reasons[0] + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
            found[check] = (message, tuple(i for _, group in items for i in group))
        if not math.isfinite(grad_norm) or grad_norm == 0.0:
            found[HealthCheck.GRAD_NORM] = (f"global gradient norm is {grad_norm}", ())
        if unchanged:
            found[HealthCheck.PARAMS_UNCHANGED] = (f"trainable weights did not change: {', '.join(unchanged)}", ())
        if lr_scheduled < lr:
            floor = f"scheduler set LR {lr_scheduled:.3g}, below the floor; training at {lr:.3g}"
            found[HealthCheck.LR_FLOOR] = (floor, ())
        low = self._lr_low(step, lr)
        if low:
            found[HealthCheck.LR_LOW] = (low, ())
        failed = self._agreed({check: check in found for check in STEP_CHECKS})
        if any(failed.values()):  # every rank reports (and a halt stops with) the same message: the first rank's
            found = first_findings(gather_objects({c: found[c] for c in STEP_CHECKS if c in found}))
        for check in STEP_CHECKS:
            message, ids = found.get(check, ("", ()))
            self._report(check, step, message, ids, failed=failed[check])

    def _lr_low(self, step: int, lr: float) -> str:
        """Why the LR of `step` is too low to train, or ""."""
        ref, c = self.schedule, self.cfg
        if not lr > 0:  # whatever the scheduler: e.g. a warmup from 0 with the floor (train.min_lr) set to 0
            return f"the step ran at LR {lr:g}: it changed nothing"
        if ref is None:  # the DeepSpeed JSON's scheduler: its schedule is its own
            return ""
        if ref.highest() < c.lr_low_below:
            return (
                f"the schedule's highest LR is {ref.highest():.3g} (train.lr={ref.peak:g}), below "
                f"monitor.lr_low_below={c.lr_low_below:g}: too small to train"
            )
        if ref.highest() < c.lr_low_ratio * ref.peak:
            return (
                f"train.warmup_steps={ref.warmup} > train.max_steps={ref.total}: the LR never exceeds "
                f"{ref.highest():.3g} of train.lr={ref.peak:g}"
            )
        if lr < c.lr_low_ratio * ref.at(step):
            return f"LR {lr:.3g} while the configured schedule gives {ref.at(step):.3g} at this step"
        return ""

    def _agreed(self, failed: dict[HealthCheck, bool]) -> dict[HealthCheck, bool]:
        """A check failed if it failed on any rank."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return failed
        flags = torch.tensor([float(v) for v in failed.values()], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return {check: bool(flag) for check, flag in zip(failed, flags.tolist(), strict=True)}

    def report_evaluation(self, check: HealthCheck, step: int, message: str, failed: bool) -> None:
        """A check measured at an evaluation (not every step): consecutive counts are then per evaluation."""
        self._report(check, step, message, (), failed)

    def _report(self, check: HealthCheck, step: int, message: str, sample_ids: tuple[str, ...], failed: bool) -> None:
        if not failed:
            self.consecutive[check] = 0
            return
        self.consecutive[check] += 1
        self.failures[check] += 1
        finding = Finding(check, step, message, sample_ids)
        self.findings.append(finding)
        text = finding.render()
        log.warning(text)
        if self.cfg.policy(check) == "halt" and self.consecutive[check] >= self.cfg.halt_after:
            raise HealthError(
                check,
                f"{text} -- failed {self.consecutive[check]} consecutive steps; stopping "
                f"(set monitor.{check.config_key}=warn to keep going)",
            )
