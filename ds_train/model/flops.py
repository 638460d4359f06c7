"""Model FLOPs per token and GPU peak throughput, for MFU."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (FLOP/s) of common training GPUs, by a substring of the device name; the first match
# wins, so the PCIe and NVL variants come before the SXM H100 ("NVIDIA H100 80GB HBM3").
BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "4090": 165e12,
}


def llm_flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    """Training FLOPs per token of the LLM part: 6 x (non-embedding matmul params that a token passes through) plus
    attention scores (12 x layers x hidden x seq). Each token uses either the text or the audio FFN, so count one."""
    cfg = model.llm.config
    dense = 0
    for name, param in model.llm.named_parameters():
        # ZeRO-3 leaves each parameter an empty placeholder; its full shape is in `ds_shape`.
        shape = getattr(param, "ds_shape", param.shape)
        if len(shape) != 2 or "embed" in name or "audio_mlp" in name or "text_lm_head" in name:
            continue
        dense += shape[0] * shape[1]
    return 6.0 * dense + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def bf16_peak_for(device_name: str) -> float | None:
    """Dense bf16 FLOP/s of a GPU by its name, or None when it is not in the table (MFU is then not reported)."""
    return next((value for key, value in BF16_PEAK_FLOPS.items() if key in device_name), None)


def peak_flops() -> float | None:
    return bf16_peak_for(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
