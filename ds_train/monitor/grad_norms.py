"""Gradient norms that work under every ZeRO stage, whole-model and per model part.

DeepSpeed's `get_global_grad_norm()` is None under ZeRO-0 fp32; `safe_get_full_grad` returns each parameter's full
gradient in every stage (ZeRO-3 gathers it: one collective per parameter, so per-part norms there cost a gather of the
whole gradient and run only every `monitor.part_norms_every` steps). Both must be read after backward and before step.
"""

from __future__ import annotations

import math

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

from ds_train.model.parts import part_of


def full_grad(param: torch.nn.Parameter) -> torch.Tensor | None:
    grad = safe_get_full_grad(param)
    return grad if grad is not None else param.grad


def full_param(param: torch.nn.Parameter) -> torch.Tensor:
    """The fp32 master copy where DeepSpeed keeps one, else the parameter itself."""
    value = safe_get_full_fp32_param(param)
    return value if value is not None else param.detach().float()


def part_grad_norms(module: torch.nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of each part present (trainable parts only), plus "total"."""
    squares: dict[str, float] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        grad = full_grad(param)
        value = 0.0 if grad is None else float(grad.detach().float().pow(2).sum())
        part = part_of(name)
        squares[part] = squares.get(part, 0.0) + value
    norms = {part: math.sqrt(sq) for part, sq in squares.items()}
    norms["total"] = math.sqrt(sum(squares.values()))
    return norms
