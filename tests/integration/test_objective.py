"""The step objective does not depend on how the step's examples are cut into micro-batches (issue 12): the same
8 examples as one micro-batch, as 4 accumulated micro-batches, and as the token-budget sampler's uneven micro-batches
give the same gradient (fp32, 1e-5 relative), through the real trainer and DeepSpeed engine."""

from __future__ import annotations

from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from data_pipeline.samplers import TokenBudgetBatchSampler
from ds_train.batch_stream import BatchStream
from ds_train.loss import LabelCounts, LossWeights
from ds_train.trainer import Trainer
from tests.helpers import make_config

EXAMPLES = list(range(8))


def _step_gradient(assets, out: Path, groups: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    """-> (the step's full gradient, flattened; label counts per micro-batch) with `groups` as the micro-batches."""
    cfg = make_config(assets, out, "data.micro_batch_size=2", f"train.gradient_accumulation_steps={len(groups)}",
                      "monitor.decode_every=0", "train.tensorboard=false")  # fmt: skip
    trainer = Trainer(cfg)
    data = trainer.data
    batches = [data.collator([data.dataset[i] for i in group]) for group in groups]
    trainer.batches = BatchStream(trainer.batches.sampler, lambda _: iter(batches), 1.0)
    micro_batches = trainer.batches.next_batches(len(groups))
    weights = LossWeights.for_step(LabelCounts.of_step(micro_batches, False, trainer.device), len(groups), 1)
    trainer.forward_backward(micro_batches, weights)
    module = trainer.engine.module
    grads = [safe_get_full_grad(p).detach().flatten().clone() for p in module.parameters() if p.requires_grad]
    labels = [int(LabelCounts.of_batch(b, False).audio[0]) for b in micro_batches]
    return torch.cat(grads), labels


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def test_gradient_is_the_same_however_the_step_is_cut(assets, tmp_path: Path) -> None:
    whole, _ = _step_gradient(assets, tmp_path / "one", [EXAMPLES])
    accumulated, labels = _step_gradient(assets, tmp_path / "four", [EXAMPLES[i : i + 2] for i in range(0, 8, 2)])
    assert len(set(labels)) > 1  # micro-batches with different label counts: a per-micro-batch mean would differ
    assert _close(whole, accumulated) < 1e-5

    probe = Trainer(make_config(assets, tmp_path / "probe", "train.tensorboard=false"))
    lengths = [probe.data.dataset.lengths[i] for i in EXAMPLES]
    sampler = TokenBudgetBatchSampler(lengths, max(lengths) * 3, seed=0, bucket_batches=1)
    uneven = [[EXAMPLES[i] for i in batch] for batch in sampler.epoch_batches(0)]
    assert sorted(i for batch in uneven for i in batch) == EXAMPLES and len({len(b) for b in uneven}) > 1
    budgeted, _ = _step_gradient(assets, tmp_path / "budget", uneven)
    assert _close(whole, budgeted) < 1e-5
