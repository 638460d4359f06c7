"""Learning-rate schedule: linear warmup that never starts at 0, cosine decay, floored at min_lr; optionally after a
Whisper alignment phase (whisper.align_steps) during which only the "align" param group trains, at align_lr, and the
"held" group's LR is exactly 0 (AdamW then moves nothing, weight decay included: its factor is 1 - lr * wd)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

# The `align_role` key of an optimizer param group (ds_train/components/align.py sets it): what the alignment
# phase does to it.
ALIGN_ROLE = "align_role"
ROLE_ALIGN = "align"  # Whisper projector (and encoder with whisper.align_encoder): trains at align_lr, then normally
ROLE_HELD = "held"  # everything else: LR 0 during the phase, then the normal schedule shifted past it


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


def group_lr_at(
    role: str | None, step: int, peak: float, min_lr: float, warmup: int, total: int, align_steps: int, align_lr: float
) -> float:
    """LR of a param group with `role` (None: no alignment phase) at 0-based optimizer step `step`: during the first
    `align_steps` steps align_lr (align group) or 0 (held group); after them warmup + cosine over the
    total - align_steps steps left, as if the run started there."""
    if step < align_steps:
        return align_lr if role == ROLE_ALIGN else 0.0
    return lr_at(step - align_steps, peak, min_lr, warmup, total - align_steps)


def is_held(group: dict) -> bool:
    """A param group the alignment phase holds fixed right now (its LR is 0 on purpose): the LR floor and the LR
    health checks leave it out. After the phase its LR is > 0 and it counts again."""
    return group.get(ALIGN_ROLE) == ROLE_HELD and group["lr"] == 0.0


def warmup_cosine(
    optimizer: Optimizer, peak: float, min_lr: float, warmup: int, total: int, align_steps: int = 0,
    align_lr: float = 0.0,
) -> LambdaLR:  # fmt: skip
    """One LambdaLR over every param group; each group's lambda follows its `align_role` (see group_lr_at). The
    groups' base LR is train.lr (= `peak`, the DeepSpeed optimizer's lr), so a lambda is the wanted LR / peak."""
    if peak <= 0:
        raise ValueError(f"train.lr must be > 0, got {peak}")

    def lam(role: str | None):
        return lambda step: group_lr_at(role, step, peak, min_lr, warmup, total, align_steps, align_lr) / peak

    return LambdaLR(optimizer, [lam(group.get(ALIGN_ROLE)) for group in optimizer.param_groups])
