"""Learning-rate schedule: linear warmup that never starts at 0, cosine decay, floored at min_lr."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """LR of optimizer step `step` (0-based). Step 0 already gets peak / warmup, never 0."""
    if warmup > 0 and step < warmup:
        value = peak * (step + 1) / warmup
    else:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        value = min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))
    return max(min_lr, value)


def highest_lr(peak: float, min_lr: float, warmup: int, total: int) -> float:
    """The highest LR `lr_at` reaches over steps 0 .. total-1 (below `peak` when the warmup outlasts the run)."""
    if warmup <= total:
        return peak
    return lr_at(total - 1, peak, min_lr, warmup, total)


def warmup_cosine(optimizer: Optimizer, peak: float, min_lr: float, warmup: int, total: int) -> LambdaLR:
    if peak <= 0:
        raise ValueError(f"train.lr must be > 0, got {peak}")
    return LambdaLR(optimizer, lambda step: lr_at(step, peak, min_lr, warmup, total) / peak)
