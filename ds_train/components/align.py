"""The Whisper alignment phase (whisper.align_steps): which trainable parameters it trains (the "align" param group:
the projector, and the encoder with whisper.align_encoder) and which it holds at LR 0 (the "held" group: everything
else). ds_train/components/schedule.py gives each group its LR; the LR floor and the health checks skip a held group."""

from __future__ import annotations

from typing import Any

import torch

from ds_train.components.schedule import ALIGN_ROLE, ROLE_ALIGN, ROLE_HELD, is_held
from ds_train.config import ConfigError, RunConfig
from ds_train.model.parts import part_of


def align_parts(cfg: RunConfig) -> set[str]:
    """The parts (ds_train/model/parts.py) the alignment phase trains."""
    return {"projector", "whisper_encoder"} if cfg.whisper.align_encoder else {"projector"}


def check_align(cfg: RunConfig, ds_config: dict[str, Any]) -> None:
    """An alignment phase needs the built-in schedule: a DeepSpeed JSON "scheduler" knows nothing of held groups."""
    if cfg.whisper.align_steps > 0 and "scheduler" in ds_config:
        raise ConfigError(
            f'{cfg.train.deepspeed_config}: the DeepSpeed config brings its own "scheduler", which cannot hold the '
            f'LLM during whisper.align_steps={cfg.whisper.align_steps}; remove the "scheduler" block (the built-in '
            "warmup + cosine schedule follows train.*) or set whisper.align_steps=0"
        )


def optimizer_param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[torch.nn.Parameter] | list[dict]:
    """What `deepspeed.initialize(model_parameters=...)` gets: the trainable parameters as they are without an
    alignment phase, else an "align" group and (unless empty) a "held" group, tagged with `align_role`."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if cfg.whisper.align_steps == 0:
        return [p for _, p in trainable]
    parts = align_parts(cfg)
    align = [p for name, p in trainable if part_of(name) in parts]
    held = [p for name, p in trainable if part_of(name) not in parts]
    if not align:
        raise ConfigError(
            f"whisper.align_steps={cfg.whisper.align_steps} but nothing of {sorted(parts)} is trainable "
            f"(model.freeze={cfg.model.freeze!r}): the alignment phase would train nothing; unfreeze the projector "
            "or set whisper.align_steps=0"
        )
    groups = [{"params": align, ALIGN_ROLE: ROLE_ALIGN}]
    if held:
        groups.append({"params": held, ALIGN_ROLE: ROLE_HELD})
    return groups


def trained_part_norms(
    part_norms: dict[str, float] | None, optimizer: torch.optim.Optimizer, cfg: RunConfig
) -> dict[str, float] | None:
    """Per-part gradient norms of the parts this step really trains: while a group is held, only the align parts
    (the params_unchanged check must not expect held weights to move)."""
    if part_norms is None or not any(is_held(group) for group in optimizer.param_groups):
        return part_norms
    return {part: norm for part, norm in part_norms.items() if part in align_parts(cfg)}
