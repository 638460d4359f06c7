"""LoRA through peft, injected in place (no wrapper class), so the model keeps its attribute paths; merged on export."""

from __future__ import annotations

import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer


def add_lora(llm: nn.Module, rank: int, alpha: float, dropout: float, targets: str) -> nn.Module:
    """Inject LoRA adapters into the named linear layers; only the adapters stay trainable in `llm`."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    return inject_adapter_in_model(config, llm)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and put the plain layer back; returns how many were merged."""
    merged = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
                merged += 1
    return merged
