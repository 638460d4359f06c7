"""The step objective does not depend on how the step's examples are cut into micro-batches (issue 12): the same
8 examples as one micro-batch, as 4 accumulated micro-batches, as the token-budget sampler's uneven micro-batches and
across 2 ranks (the real deepspeed launcher, CPU) give the same gradient (fp32, 1e-5 relative), through the real
trainer and DeepSpeed engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from data_pipeline.loading.samplers import TokenBudgetBatchSampler
from ds_train.components.batch_stream import BatchStream
from ds_train.model.loss import LabelCounts, LossSums, LossWeights
from ds_train.trainer import Trainer
from tests.helpers import REPO, command_env, free_port
from tests.integration._two_rank_gradient import EXAMPLES, RANK_EXAMPLES, gradient_config, step_gradient

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
SCRIPT = Path(__file__).with_name("_two_rank_gradient.py")


def _step_gradient(assets, prepared: Path, out: Path, groups: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    """-> (the step's full gradient, flattened; label counts per micro-batch) with `groups` as the micro-batches."""
    trainer = Trainer(gradient_config(prepared, assets.codec_file, out, len(groups)))
    return step_gradient(trainer, groups)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def test_gradient_is_the_same_however_the_step_is_cut(assets, prepared_corpus, tmp_path: Path) -> None:
    whole, _ = _step_gradient(assets, prepared_corpus, tmp_path / "one", [EXAMPLES])
    four = [EXAMPLES[i : i + 2] for i in range(0, 8, 2)]
    accumulated, labels = _step_gradient(assets, prepared_corpus, tmp_path / "four", four)
    assert len(set(labels)) > 1  # micro-batches with different label counts: a per-micro-batch mean would differ
    assert _close(whole, accumulated) < 1e-5

    probe = Trainer(gradient_config(prepared_corpus, assets.codec_file, tmp_path / "probe", 1))
    lengths = [probe.data.dataset.lengths[i] for i in EXAMPLES]
    sampler = TokenBudgetBatchSampler(lengths, max(lengths) * 3, seed=0, bucket_batches=1)
    uneven = [[EXAMPLES[i] for i in batch] for batch in sampler.epoch_batches(0)]
    assert sorted(i for batch in uneven for i in batch) == EXAMPLES and len({len(b) for b in uneven}) > 1
    budgeted, _ = _step_gradient(assets, prepared_corpus, tmp_path / "budget", uneven)
    assert _close(whole, budgeted) < 1e-5


def test_gradient_across_two_ranks_equals_the_whole_batch(assets, prepared_corpus, tmp_path: Path) -> None:
    """Rank r of a real 2-rank launch takes RANK_EXAMPLES[r]; the reduced gradient equals one rank's whole batch."""
    grad_file, port = tmp_path / "two_rank_grad.pt", free_port()
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), "--no_local_rank", str(SCRIPT), str(grad_file),
           str(prepared_corpus), str(assets.codec_file), str(tmp_path / "two")]  # fmt: skip
    env = dict(command_env(), PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}"
    )
    two_ranks = torch.load(grad_file)

    whole, labels = _step_gradient(assets, prepared_corpus, tmp_path / "one", [EXAMPLES])
    halves = [_step_gradient(assets, prepared_corpus, tmp_path / f"half{r}", [RANK_EXAMPLES[r]]) for r in range(2)]
    assert two_ranks["labels"] == halves[0][1] and halves[0][1] != halves[1][1]  # uneven label counts across ranks
    assert _close(whole, two_ranks["grad"]) < 1e-5
    # What DeepSpeed's plain average of per-rank means would give: far from the token-weighted gradient.
    per_rank_mean = (halves[0][0] + halves[1][0]) / 2
    assert _close(whole, per_rank_mean) > 1e-3


def _gradient_with(trainer: Trainer, batches: list[dict], weights: LossWeights) -> tuple[torch.Tensor, LossSums]:
    """forward_backward of `batches` (fed through the trainer's BatchStream, one more queued behind them) with
    `weights` -> (the full gradient, flattened; the sums)."""
    spare = batches[-1]
    trainer.batches = BatchStream(trainer.batches.sampler, lambda _: iter([*batches, spare]), 1.0)
    micro_batches = trainer.batches.next_batches(len(batches))
    sums, _ = trainer.forward_backward(micro_batches, weights)
    params = [p for p in trainer.engine.module.parameters() if p.requires_grad]
    return torch.cat([safe_get_full_grad(p).detach().flatten().clone() for p in params]), sums


def test_a_skipped_micro_batch_takes_nothing_of_the_next_step(assets, prepared_corpus, tmp_path: Path) -> None:
    """Issue 22 §4: a micro-batch with a non-finite loss was replaced by the next step's first micro-batch. Now the
    step is its 3 usable micro-batches, with the planned step's label counts as denominators, exactly, and the data
    position does not move past the step."""
    groups = [EXAMPLES[i : i + 2] for i in range(0, 8, 2)]
    trainer = Trainer(gradient_config(prepared_corpus, assets.codec_file, tmp_path / "skip", 4))
    data = trainer.data
    batches = [data.collator([data.dataset[i] for i in group]) for group in groups]
    planned = LabelCounts.of_step(batches, False, trainer.device)
    poisoned = {**batches[1], "whisper_input_features": batches[1]["whisper_input_features"] * float("nan")}
    skipped, sums = _gradient_with(trainer, [batches[0], poisoned, *batches[2:]], LossWeights.for_step(planned, 4, 1))
    assert trainer.batches.fetched == 4 and trainer.monitor.skipped_micro_batches == 1

    used = [batches[0], *batches[2:]]
    reference = Trainer(gradient_config(prepared_corpus, assets.codec_file, tmp_path / "used", 3))
    expected, used_sums = _gradient_with(reference, used, LossWeights.for_step(planned, 3, 1))
    assert _close(expected, skipped) < 1e-6
    assert sums.loss == used_sums.loss  # train/loss: the objective's value over the micro-batches used
