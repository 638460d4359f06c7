"""The training objective and the one loss/metrics accumulator shared by training and evaluation.

Objective of one optimizer step (transformers' reduction, made independent of batching): for each codebook k, the
summed cross-entropy over every labelled token of the step (all micro-batches, all ranks) divided by that codebook's
label count over the step; summed over codebooks; the text loss (with the text head) the same way. Each micro-batch
backpropagates its share, `sum_k CE_sum_k(mb) / N_k(step)`, times (accumulation steps x ranks) because DeepSpeed
divides by the first and averages over the second. So a step's gradient is the same whether its examples come as one
micro-batch, k accumulated ones, token-budget batches or several ranks (tests/integration/test_objective.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from data_pipeline.types import IGNORE_INDEX


@dataclass(frozen=True)
class LossWeights:
    """Per-token loss weights of one optimizer step: audio [C] (per codebook) and text."""

    audio: torch.Tensor
    text: float

    @classmethod
    def for_step(cls, counts: LabelCounts, micro_batches: int, world_size: int) -> LossWeights:
        """`counts`: the step's label counts summed over all micro-batches and ranks."""
        scale = float(micro_batches * world_size)
        return cls(scale / counts.audio.double().clamp(min=1), scale / max(1.0, float(counts.text)))


@dataclass
class LabelCounts:
    """Labelled tokens of a batch (or a step): audio [C] per codebook, and text."""

    audio: torch.Tensor
    text: int = 0

    @classmethod
    def of_batch(cls, batch: dict, text_head: bool) -> LabelCounts:
        """Counted from a collated batch's labels (what the model will predict: position t predicts t+1)."""
        audio = (batch["audio_labels"] != IGNORE_INDEX).sum((0, 1))
        text = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if text_head else 0
        return cls(audio, text)

    @classmethod
    def of_step(cls, batches: list[dict], text_head: bool, device: torch.device) -> LabelCounts:
        """Summed over the step's micro-batches on this rank, then over all ranks (one all-reduce)."""
        each = [cls.of_batch(b, text_head) for b in batches]
        packed = torch.cat([torch.stack([c.audio for c in each]).sum(0), torch.tensor([sum(c.text for c in each)])])
        packed = packed.double()
        if dist.is_initialized() and dist.get_world_size() > 1:
            packed = packed.to(device)  # NCCL reduces only device tensors
            dist.all_reduce(packed)
            packed = packed.cpu()
        return cls(packed[:-1], int(packed[-1]))


@dataclass
class LossSums:
    """Summed cross-entropies and counts over any number of micro-batches: per codebook [C] CE sum, correct top-1
    predictions and labelled tokens; text CE sum and tokens; samples, tokens (attention mask) and micro-batches.
    Loss values derived from it are token-weighted, so they do not depend on how the data was batched."""

    num_codebooks: int
    ce: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)
    text_ce: float = 0.0
    text_count: float = 0.0
    samples: float = 0.0
    tokens: float = 0.0
    micro_batches: float = 0.0

    def __post_init__(self) -> None:
        self.ce, self.correct, self.count = (torch.zeros(self.num_codebooks, dtype=torch.float64) for _ in range(3))

    def add(self, out, batch: dict) -> None:
        """One micro-batch's model output (`VoiceCloningOutput`) and its collated batch."""
        self.ce += out.codebook_ce_sum.double().cpu()
        self.correct += out.codebook_correct.double().cpu()
        self.count += out.codebook_count.double().cpu()
        self.text_ce += float(out.text_ce_sum)
        self.text_count += float(out.text_count)
        self.samples += len(batch["sample_ids"])
        self.tokens += float(batch["attention_mask"].sum())
        self.micro_batches += 1

    def _pack(self) -> torch.Tensor:
        head = [self.text_ce, self.text_count, self.samples, self.tokens, self.micro_batches]
        return torch.cat([torch.tensor(head, dtype=torch.float64), self.ce, self.correct, self.count])

    def all_reduce(self, device: torch.device) -> LossSums:
        """The sums over every rank (one collective), as a new accumulator; this one when there is one rank."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self
        packed = self._pack().to(device)  # NCCL reduces only device tensors
        dist.all_reduce(packed)
        packed = packed.cpu()
        total = LossSums(self.num_codebooks)
        total.text_ce, total.text_count, total.samples, total.tokens, total.micro_batches = packed[:5].tolist()
        total.ce, total.correct, total.count = packed[5:].view(3, self.num_codebooks).clone()
        return total

    @property
    def codebook_loss(self) -> torch.Tensor:
        """[C] mean cross-entropy per codebook."""
        return self.ce / self.count.clamp(min=1)

    @property
    def audio_loss(self) -> float:
        return float(self.codebook_loss.sum())

    @property
    def text_loss(self) -> float | None:
        return self.text_ce / self.text_count if self.text_count > 0 else None

    @property
    def loss(self) -> float:
        """The objective's value: audio loss plus the text loss where there are text labels."""
        return self.audio_loss + (self.text_loss or 0.0)

    def metrics(self, prefix: str) -> dict[str, float]:
        """`{prefix}/loss`, `/audio_loss`, `/audio_top1`, `/text_loss` (with text labels) and per codebook
        `{prefix}/codebook_loss/k`, `{prefix}/codebook_top1/k` (inside the prefix's TensorBoard group)."""
        values = {
            f"{prefix}/loss": self.loss,
            f"{prefix}/audio_loss": self.audio_loss,
            f"{prefix}/audio_top1": float(self.correct.sum() / self.count.sum().clamp(min=1)),
        }
        if self.text_loss is not None:
            values[f"{prefix}/text_loss"] = self.text_loss
        top1 = self.correct / self.count.clamp(min=1)
        for k in range(self.num_codebooks):
            values[f"{prefix}/codebook_loss/{k}"] = float(self.codebook_loss[k])
            values[f"{prefix}/codebook_top1/{k}"] = float(top1[k])
        return values
