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

from data_pipeline.layout import IGNORE_INDEX
from ds_train.config import MonitorSection
from ds_train.grad_norms import full_param, part_of

log = logging.getLogger("ds_train")

LIKELY_CAUSE = {
    "whisper_features": "reference waveforms missing from the rows, or the collator/layout built no <|AUDIO|> span",
    "codec_codes": "codec codes not attached to the samples (encoding failed or was skipped) or every target masked",
    "grad_norm": "loss does not depend on any trainable weight (frozen model, detached graph) or gradients exploded",
    "nonfinite_loss": "bad input (NaN/inf audio or features), an exploding model, or too high a learning rate",
    "params_unchanged": "learning rate 0, frozen parameters, or an optimizer that does not hold these parameters",
    "lr_floor": "the scheduler decays (or warms up) below train.min_lr; the floor holds the effective LR",
}


class HealthError(RuntimeError):
    """A health check with policy "halt" failed on `halt_after` consecutive steps."""


@dataclass
class Finding:
    check: str
    step: int
    message: str
    sample_ids: tuple[str, ...]

    def render(self) -> str:
        ids = ", ".join(self.sample_ids[:8]) + (" ..." if len(self.sample_ids) > 8 else "")
        return (
            f"[health:{self.check}] step {self.step}: {self.message}"
            + (f"; samples: {ids}" if ids else "")
            + f"; likely cause: {LIKELY_CAUSE[self.check]}"
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
        self.consecutive: dict[str, int] = defaultdict(int)
        self.failures: dict[str, int] = defaultdict(int)
        self.skipped_micro_batches = 0
        self.findings: list[Finding] = []
        self._pending: dict[str, list] = {}
        self._snapshots: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """Counters carried across a resume (per-check failures, consecutive failures, skipped micro-batches)."""
        return {
            "failures": dict(self.failures),
            "consecutive": dict(self.consecutive),
            "skipped_micro_batches": self.skipped_micro_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        self.failures.update(state.get("failures", {}))
        self.consecutive.update(state.get("consecutive", {}))
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
                self._pending.setdefault("whisper_features", []).append((problem, ids))
        frames = int(batch["audio_input_ids_mask"].sum())
        labelled = int((batch["audio_labels"] != IGNORE_INDEX).sum())
        if frames == 0 or labelled == 0:
            self._pending.setdefault("codec_codes", []).append(
                (f"{frames} audio frames at placeholders, {labelled} labelled audio tokens", ids)
            )

    def observe_nonfinite_loss(self, batch: dict, loss: float) -> None:
        self.skipped_micro_batches += 1
        ids = tuple(batch.get("sample_ids", ()))
        message = f"loss is {loss}; the micro-batch was skipped (no backward, no update)"
        self._pending.setdefault("nonfinite_loss", []).append((message, ids))

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
        for check in ("whisper_features", "codec_codes", "nonfinite_loss"):
            items = pending.get(check, [])
            ids = tuple(i for _, group in items for i in group)
            self._report(check, step, items[0][0] if items else "", ids, failed=bool(items))
        bad_norm = not math.isfinite(grad_norm) or grad_norm == 0.0
        self._report("grad_norm", step, f"global gradient norm is {grad_norm}", (), failed=bad_norm)
        self._report(
            "params_unchanged", step, f"trainable weights did not change: {', '.join(unchanged)}", (),
            failed=bool(unchanged),
        )  # fmt: skip
        self._report(
            "lr_floor", step, f"scheduler set LR {lr_scheduled:.3g}, below the floor; training at {lr:.3g}", (),
            failed=lr_scheduled < lr,
        )  # fmt: skip

    def _report(self, check: str, step: int, message: str, sample_ids: tuple[str, ...], failed: bool) -> None:
        if not failed:
            self.consecutive[check] = 0
            return
        self.consecutive[check] += 1
        self.failures[check] += 1
        finding = Finding(check, step, message, sample_ids)
        self.findings.append(finding)
        text = finding.render()
        log.warning(text)
        policy = getattr(self.cfg, f"on_{check}")
        if policy == "halt" and self.consecutive[check] >= self.cfg.halt_after:
            raise HealthError(
                f"{text} -- failed {self.consecutive[check]} consecutive steps; stopping "
                f"(set monitor.on_{check}=warn to keep going)"
            )
