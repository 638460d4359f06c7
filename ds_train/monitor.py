"""Training health: the five silent failures of the seed report made loud.

The monitor observes the engine through a narrow interface (batches, model outputs, the optimizer's param groups,
gradient norms) and changes one thing: it clamps every param group's LR to the floor after the scheduler steps.
Each check has a policy: "warn" logs every failing step; "halt" raises `HealthError` after `halt_after` consecutive
failing steps. Messages name the check, the step, the samples and the likely cause.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from data_pipeline.types import IGNORE_INDEX
from ds_train.config import MonitorSection
from ds_train.grad_norms import full_param
from ds_train.health import HealthCheck, HealthError
from ds_train.parts import part_of

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
    """Clamp every param group's LR to >= min_lr. -> (lowest scheduled LR, lowest effective LR)."""
    scheduled = min(group["lr"] for group in optimizer.param_groups)
    for group in optimizer.param_groups:
        if not group["lr"] >= min_lr:  # also catches NaN
            group["lr"] = min_lr
    return scheduled, min(group["lr"] for group in optimizer.param_groups)


class HealthMonitor:
    """Collects per-micro-batch observations for a step, then reports each check once per optimizer step."""

    def __init__(self, cfg: MonitorSection, whisper_enabled: bool) -> None:
        self.cfg = cfg
        self.whisper_enabled = whisper_enabled
        self.consecutive: dict[HealthCheck, int] = defaultdict(int)
        self.failures: dict[HealthCheck, int] = defaultdict(int)
        self.skipped_micro_batches = 0
        self.findings: list[Finding] = []
        self._pending: dict[HealthCheck, list] = {}
        self._snapshots: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """Counters carried across a resume (per-check failures, consecutive failures, skipped micro-batches)."""
        return {
            "failures": {c.value: n for c, n in self.failures.items()},
            "consecutive": {c.value: n for c, n in self.consecutive.items()},
            "skipped_micro_batches": self.skipped_micro_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        self.failures.update({HealthCheck(c): n for c, n in state.get("failures", {}).items()})
        self.consecutive.update({HealthCheck(c): n for c, n in state.get("consecutive", {}).items()})
        self.skipped_micro_batches = int(state.get("skipped_micro_batches", 0))

    # -- per micro-batch -------------------------------------------------------------------------------------------
    def observe_batch(self, batch: dict, out) -> None:
        """Whisper-feature and codec-code checks on one micro-batch and its model output."""
        ids = tuple(batch.get("sample_ids", ()))
        if self.whisper_enabled:
            feats = batch.get("whisper_input_features")
            problem = None
            if feats is None or feats.numel() == 0:
                shape = None if feats is None else tuple(feats.shape)
                problem = f"Whisper is on but the batch has no reference features (shape {shape})"
            elif not bool(feats.detach().abs().sum() > 0):
                problem = f"Whisper features are all zeros (shape {tuple(feats.shape)})"
            elif out.audio_in_positions == 0:
                problem = "Whisper features were computed but no <|AUDIO|> position received them"
            if problem:
                self._pending.setdefault(HealthCheck.WHISPER_FEATURES, []).append((problem, ids))
        frames = int(batch["audio_input_ids_mask"].sum())
        labelled = int((batch["audio_labels"] != IGNORE_INDEX).sum())
        if frames == 0 or labelled == 0:
            self._pending.setdefault(HealthCheck.CODEC_CODES, []).append(
                (f"{frames} audio frames at placeholders, {labelled} labelled audio tokens", ids)
            )

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
            self._snapshots[name] = full_param(param).detach().clone()

    def end_step(self, step: int, module: torch.nn.Module, grad_norm: float, lr_scheduled: float, lr: float) -> None:
        """After the step: report every check once (pass or fail) so consecutive counts are per step."""
        unchanged = []
        params = dict(module.named_parameters())
        for name, before in self._snapshots.items():
            if torch.equal(before, full_param(params[name]).detach()):
                unchanged.append(name)
        pending, self._pending = self._pending, {}
        for check in (HealthCheck.WHISPER_FEATURES, HealthCheck.CODEC_CODES, HealthCheck.NONFINITE_LOSS):
            items = pending.get(check, [])
            ids = tuple(i for _, group in items for i in group)
            self._report(check, step, items[0][0] if items else "", ids, failed=bool(items))
        bad_norm = not math.isfinite(grad_norm) or grad_norm == 0.0
        self._report(HealthCheck.GRAD_NORM, step, f"global gradient norm is {grad_norm}", (), failed=bad_norm)
        self._report(
            HealthCheck.PARAMS_UNCHANGED, step, f"trainable weights did not change: {', '.join(unchanged)}", (),
            failed=bool(unchanged),
        )  # fmt: skip
        floor = f"scheduler set LR {lr_scheduled:.3g}, below the floor; training at {lr:.3g}"
        self._report(HealthCheck.LR_FLOOR, step, floor, (), failed=lr_scheduled < lr)

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
