"""GPU memory of a training run, estimated before launch: model states per ZeRO stage (with LoRA, frozen parts and CPU
offload), activations for a token budget (with or without activation checkpointing) and a fixed runtime allowance.

Method (docs/FINETUNE.md "Memory plan"):
- Model states, the ZeRO paper's formulas: bf16 mixed precision keeps 2-byte weights and gradients and 12 bytes of
  fp32 AdamW state (master weight, two moments) per *trainable* parameter; fp32 keeps 4 + 4 + 8 (+ 4 for the master
  copy DeepSpeed's ZeRO-1/2 optimizer clones even then). Frozen parameters (LoRA's base weights, `model.freeze`) keep
  only their weights. ZeRO-1 partitions the optimizer state over the ranks, ZeRO-2 also the gradients (plus one
  `reduce_bucket_size` bucket they are gathered in), ZeRO-3 also the weights. `offload_optimizer` moves the optimizer
  state and the gradient partition to host RAM (the GPU keeps one reduce bucket of gradients); `offload_param`
  (ZeRO-3) keeps on the GPU at most `stage3_max_live_parameters` gathered weights.
- Activations per token and decoder layer, what autograd keeps for backward in a Llama layer with SDPA attention, in
  bf16 (fp32 doubles it): 2 x (10 h + 2 kv + 4 i) bytes (h hidden, kv the K/V width, i the FFN width; the 10 h covers
  the norms' inputs and outputs, Q, the attention output and the dual-FFN's gather/scatter copies; 4 i the gate, up,
  activation and product). With activation checkpointing only each layer's input (2 h) is kept, plus one layer's full
  set while it is recomputed. The audio head adds its fp32 logits and their gradient (2 x 4 x C x K bytes) per token
  (an upper bound: only labelled positions get logits). A trainable Whisper encoder adds the same per-layer formula
  (GELU FFN: 2 x ffn) over 1500 frames per 30 s chunk.
- Runtime allowance: `RUNTIME_OVERHEAD_GIB` for the CUDA context, communication buffers and allocator fragmentation
  (assumed, not measured).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2.0**30
RUNTIME_OVERHEAD_GIB = 2.0
WHISPER_FRAMES_PER_CHUNK = 1500  # encoder positions of one 30 s chunk (before the 2x pooling)
DEFAULT_MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed's stage3_max_live_parameters default
DEFAULT_REDUCE_BUCKET = 5e8  # DeepSpeed's reduce_bucket_size default (elements)


def zero_memory_per_gpu(num_params: int, world_size: int) -> dict[str, float]:
    """GiB per GPU for weights, gradients and AdamW state in bf16 mixed precision (2 + 2 + 12 bytes/param), per ZeRO
    stage, everything trainable, no offload, activations and buffers excluded."""
    return {f"zero{s}": model_states(num_params, 0, s, world_size, reduce_bucket=0).gpu_gib for s in range(4)}


@dataclass(frozen=True)
class StateMemory:
    """Model-state bytes on one GPU and in host RAM (per rank), by kind."""

    weights: float
    grads: float
    optimizer: float
    host: float

    @property
    def gpu_gib(self) -> float:
        return (self.weights + self.grads + self.optimizer) / GIB


def model_states(
    trainable: int,
    frozen: int,
    stage: int,
    world_size: int,
    bf16: bool = True,
    offload_optimizer: bool = False,
    offload_param: bool = False,
    max_live_parameters: float = DEFAULT_MAX_LIVE_PARAMETERS,
    reduce_bucket: float = DEFAULT_REDUCE_BUCKET,
) -> StateMemory:
    """Bytes of weights, gradients and optimizer state per GPU (and in host RAM per rank) for `trainable` + `frozen`
    parameters under ZeRO `stage` on `world_size` data-parallel ranks."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {stage}")
    n = float(world_size)
    w, g, o = (2.0, 2.0, 12.0) if bf16 else (4.0, 4.0, 8.0)
    if not bf16 and stage in (1, 2):
        o = 12.0  # DeepSpeed's ZeRO-1/2 optimizer clones an fp32 master partition even when the weights are fp32
    total = float(trainable + frozen)
    weights = total * w / (n if stage == 3 else 1.0)
    grads = trainable * g / (n if stage >= 2 else 1.0)
    if stage >= 2:  # the contiguous reduce bucket that gradients are gathered in before reduction
        grads += min(float(trainable), reduce_bucket) * g
    optimizer = trainable * o / (n if stage >= 1 else 1.0)
    host = 0.0
    if offload_optimizer:
        # the optimizer partition and an fp32 gradient partition live in host RAM; one reduce bucket stays
        host += trainable * (o + 4.0) / (n if stage >= 1 else 1.0)
        optimizer, grads = 0.0, min(grads, reduce_bucket * g)
    if offload_param and stage == 3:
        host += weights
        weights = min(total, max_live_parameters) * w
    return StateMemory(weights, grads, optimizer, host)


@dataclass(frozen=True)
class LayerShape:
    """What activation memory depends on: per-layer widths, layer count, and the audio head's logits per token."""

    layers: int
    hidden: int
    kv_width: int
    ffn: int
    gated: bool = True  # SwiGLU (gate, up, act, product) vs a GELU FFN (fc1 out, act)
    head_logits: int = 0  # logits per token of a head computed in fp32 (audio: C x K)

    def layer_bytes(self, element: float = 2.0) -> float:
        """Bytes per token one layer keeps for backward (`element` bytes per value: 2 in bf16, 4 in fp32)."""
        return element * (10 * self.hidden + 2 * self.kv_width + (4 if self.gated else 2) * self.ffn)

    def bytes_per_token(self, checkpointing: bool, element: float = 2.0) -> float:
        head = 2 * 4.0 * self.head_logits
        if checkpointing:
            return self.layers * element * self.hidden + self.layer_bytes(element) + head
        return self.layers * self.layer_bytes(element) + head


def activation_gib(
    llm: LayerShape,
    tokens: int,
    checkpointing: bool,
    whisper: LayerShape | None = None,
    whisper_chunks: int = 0,
    bf16: bool = True,
) -> float:
    """GiB of activations for one micro-batch of `tokens` padded tokens (and `whisper_chunks` 30 s chunks through a
    trainable Whisper encoder), in bf16 (2 bytes per value) or fp32 (4)."""
    element = 2.0 if bf16 else 4.0
    total = tokens * llm.bytes_per_token(checkpointing, element)
    if whisper is not None and whisper_chunks:
        total += whisper_chunks * WHISPER_FRAMES_PER_CHUNK * whisper.bytes_per_token(checkpointing, element)
    return total / GIB
