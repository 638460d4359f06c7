"""Conditioning gain: does the model use its reference voice?

At each evaluation the eval set is scored twice with teacher forcing: with each sample's own reference (the evaluation's
`eval/loss`) and with the reference of another speaker (`cloning/loss_swapped_ref`; a seeded cross-speaker derangement,
`data_pipeline.loading.reference_swap.plan_swaps`). The gain is their difference, swapped - true, token-weighted like
`eval/loss` (per codebook too: `cloning/conditioning_gain_cb{k}`). A model that ignores its reference scores ~0. With
Whisper on, the codec codes alone (`cloning/conditioning_gain_codes`) and the Whisper span alone
(`cloning/conditioning_gain_whisper`) are swapped as well, to show which path carries the voice.

The true-reference loss is the evaluation's own `eval/loss` when every sample has a speaker label (the same examples,
so it is not logged twice); otherwise the labelled subset is scored once more with its own references and logged as
`cloning/loss_true_ref`. Every pass runs through `Evaluator`, so
the sums are exact over ranks and micro-batching, and all ranks run the same forwards (ZeRO-3).
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch.utils.data import Dataset

from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.loading.reference_swap import SwapMode, SwappedDataset, SwapPlan, plan_swaps
from ds_train.config import MonitorSection
from ds_train.evaluation.held_out import Evaluator
from ds_train.monitor.health import HealthCheck
from ds_train.monitor.health_monitor import HealthMonitor

log = logging.getLogger("ds_train")
GAIN = "cloning/conditioning_gain"
TRUE_LOSS = "cloning/loss_true_ref"  # logged only when it is not eval/loss (see `true_reference_loss`)


class _Subset(Dataset):
    """The labelled samples of a plan with their own references (the true-reference pass when some lack a label)."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.lengths = [dataset.lengths[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return self.dataset[self.indices[k]]


def _losses(values: dict[str, float], num_codebooks: int) -> tuple[float, list[float]]:
    """(eval/loss, per-codebook eval losses) from an `Evaluator.run` result."""
    return values["eval/loss"], [values[f"eval/codebook_loss/{k}"] for k in range(num_codebooks)]


class ConditioningGain:
    """Scores the eval set with swapped references, at each evaluation."""

    def __init__(
        self, evaluator: Evaluator, layout: LayoutBuilder, whisper: bool, seed: int, verbose: bool = True
    ) -> None:
        """`evaluator`: the run's evaluator of the eval set; each pass is an evaluator like it (collator, device
        preparation, batching, rank share) over a swapped view of its dataset."""
        dataset = evaluator.dataset
        self.num_codebooks = evaluator.num_codebooks
        plan = plan_swaps(dataset.speakers, seed)
        self.skip_reason: str | None = plan if isinstance(plan, str) else None
        self.plan: SwapPlan | None = None if isinstance(plan, str) else plan
        self.passes: dict[str, Evaluator] = {}
        self.true_pass: Evaluator | None = None
        if self.plan is None:
            if verbose:
                log.info("conditioning gain: skipped on this set (%s)", self.skip_reason)
            return
        modes: tuple[SwapMode, ...] = ("all", "codes", "whisper") if whisper else ("all",)
        self.passes = {m: evaluator.with_dataset(SwappedDataset(dataset, layout, self.plan, m)) for m in modes}
        if self.plan.unlabelled:
            self.true_pass = evaluator.with_dataset(_Subset(dataset, self.plan.indices))
        if verbose:
            log.info(
                "conditioning gain: %d samples of %d speakers, each scored with another speaker's reference%s",
                len(self.plan.indices), self.plan.speakers, (
                    f"; {self.plan.unlabelled} samples without a speaker label left out" if self.plan.unlabelled
                    else ""
                ),
            )  # fmt: skip

    @torch.no_grad()
    def run(self, engine: torch.nn.Module, eval_values: dict[str, float]) -> dict[str, float]:
        """`eval_values`: the evaluation's own result (the true-reference loss when every sample is labelled).
        -> cloning/loss_true_ref (only when it differs from eval/loss: some samples lack a speaker label),
        cloning/loss_swapped_ref, cloning/conditioning_gain (+ _cb{k}, _codes, _whisper) and
        cloning/conditioning_time_s (seconds these passes took); {} when the set cannot be swapped."""
        if self.plan is None:
            return {}
        started = time.perf_counter()
        true_values = self.true_pass.run(engine) if self.true_pass is not None else eval_values
        true_loss, true_cb = _losses(true_values, self.num_codebooks)
        out = {TRUE_LOSS: true_loss} if self.true_pass is not None else {}
        for mode, evaluator in self.passes.items():
            loss, per_codebook = _losses(evaluator.run(engine), self.num_codebooks)
            evaluator.first_sample = None  # the sample logger shows true-reference samples only
            if mode == "all":
                out["cloning/loss_swapped_ref"] = loss
                out[GAIN] = loss - true_loss
                out.update({f"{GAIN}_cb{k}": per_codebook[k] - true_cb[k] for k in range(self.num_codebooks)})
            else:
                out[f"{GAIN}_{mode}"] = loss - true_loss
        out["cloning/conditioning_time_s"] = time.perf_counter() - started
        return out


def true_reference_loss(values: dict[str, float]) -> float:
    """The eval loss with each sample's own reference, from an evaluation's values (eval/* and cloning/*)."""
    return values.get(TRUE_LOSS, values["eval/loss"])


INFLUENCE_FLOOR = 1e-4  # nats: below it on every codebook and path, swapping the reference changed nothing at all


def reference_influence(values: dict[str, float]) -> float:
    """The largest change any reference swap made to the eval loss, in nats: over the whole gain, each codebook's
    and each path's (codes, Whisper). Exactly 0 up to rounding (< 1e-5) when the model cannot see the reference;
    above 1e-4 after one step of a model that can, even before it has learnt to use it."""
    finite = [abs(v) for k, v in values.items() if k.startswith(GAIN) and math.isfinite(v)]
    return max(finite, default=math.inf)  # none finite: a broken evaluation, judged by the gain rule


def check_reference_ignored(
    monitor: HealthMonitor, cfg: MonitorSection, step: int, values: dict[str, float], previous_loss: float | None
) -> None:
    """The `reference_ignored` health check on one evaluation's values. Two findings:
    - at every evaluation, no influence: the reference swap changes the eval loss by less than `INFLUENCE_FLOOR` on
      every codebook and path, so the reference never reaches the prediction (masked, dropped or misplaced by the
      layout): a broken run, whatever its age;
    - from step `cfg.reference_ignored_after` on, a gain below `cfg.reference_ignored_below` nats (or not finite),
      but only once the held-out loss has stopped falling fast (it improved by less than
      `cfg.reference_ignored_plateau` of itself since the previous evaluation, `previous_loss`): a young model that
      still learns the text and the codes has not yet learnt to read a voice, and is not judged for it.
    Not reported at all (neither pass nor fail) when the gain was not measured (a set of one speaker)."""
    gain = values.get(GAIN)
    if gain is None:
        return
    influence = reference_influence(values)
    loss, swapped = true_reference_loss(values), values["cloning/loss_swapped_ref"]
    if math.isfinite(gain) and influence < INFLUENCE_FLOOR:
        message = (
            f"swapping the reference changes the eval loss by {influence:.1e} nats at most (every codebook and path; "
            f"< {INFLUENCE_FLOOR:g}): the model cannot see its reference: it is masked, dropped or misplaced by the "
            "layout"
        )
        monitor.report_evaluation(HealthCheck.REFERENCE_IGNORED, step, message, True)
        return
    improvement = (previous_loss - loss) / abs(previous_loss) if previous_loss else math.inf
    if step < cfg.reference_ignored_after or improvement >= cfg.reference_ignored_plateau:
        return  # still learning fast: too young to judge (and a fast fall is not a failure either)
    failed = not (math.isfinite(gain) and gain >= cfg.reference_ignored_below)
    message = (
        f"conditioning gain {gain:.4f} nats (eval loss with another speaker's reference {swapped:.4f} - with its own "
        f"{loss:.4f}) is below monitor.reference_ignored_below={cfg.reference_ignored_below}, with the eval loss "
        f"no longer falling fast ({improvement:+.1%} since the previous evaluation)"
    )
    monitor.report_evaluation(HealthCheck.REFERENCE_IGNORED, step, message, failed)
