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


def fp32_masters(optimizer) -> dict[int, torch.Tensor]:
    """id(model parameter) -> its fp32 master copy, for the optimizer wrapper `safe_get_full_fp32_param` does not know:
    ZeRO-0 in bf16/fp16 (`FP16_UnfusedOptimizer`) keeps the masters in `fp32_groups`, beside the model's `fp16_groups`.
    Empty for every other wrapper."""
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not isinstance(low, list) or not isinstance(high, list):
        return {}
    return {
        id(param): master for low_group, high_group in zip(low, high, strict=False)
        for param, master in zip(low_group, high_group, strict=False)
        if isinstance(master, torch.Tensor) and master.dtype == torch.float32 and master.shape == param.shape
    }  # fmt: skip


def full_param(param: torch.nn.Parameter, masters: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The fp32 master copy where DeepSpeed keeps one (`masters`: see fp32_masters), else the parameter itself."""
    if masters and id(param) in masters:
        return masters[id(param)].detach()
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
