"""The named parts of a voice-cloning model: one table read by `model.freeze`, the per-part gradient norms and
`python -m ds_train info`. A parameter belongs to the first part whose rule matches its name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPart:
    name: str
    description: str
    matches: Callable[[str], bool]  # parameter name of `VoiceCloningModel` -> belongs to this part


_AUDIO_FFN_KEYS = ("audio_mlp", "audio_input_layernorm", "audio_post_attention_layernorm")

# In matching order: the Whisper parts first (their names contain "embed" too), the catch-all LLM part last.
PARTS: tuple[ModelPart, ...] = (
    ModelPart("projector", "Whisper -> LLM-width linear projector", lambda n: n.startswith("whisper.projector")),
    ModelPart("whisper_encoder", "Whisper reference-audio encoder", lambda n: n.startswith("whisper.")),
    ModelPart("audio_ffn", "dual-FFN audio layers and their norms", lambda n: any(k in n for k in _AUDIO_FFN_KEYS)),
    ModelPart(
        "audio_embed_head",
        "codec-code embeddings and audio head",
        lambda n: "embed_audio_tokens" in n or "audio_lm_head" in n,
    ),
    ModelPart("text_embed_head", "text embeddings and text head", lambda n: "embed_tokens" in n or "text_lm_head" in n),
    ModelPart("llm_attention_text_ffn", "attention, text FFN and norms of the LLM", lambda n: True),
)
PART_NAMES: tuple[str, ...] = tuple(part.name for part in PARTS)
# Short names accepted by `model.freeze`.
ALIASES = {"llm": "llm_attention_text_ffn"}


def part_of(parameter_name: str) -> str:
    """Which part a parameter of `VoiceCloningModel` belongs to."""
    return next(part.name for part in PARTS if part.matches(parameter_name))


def parse_part_names(spec: str, key: str) -> set[str]:
    """A comma-separated list of part names or aliases -> part names; unknown names raise ValueError naming `key`."""
    names = {ALIASES.get(n.strip(), n.strip()) for n in spec.split(",") if n.strip()}
    unknown = names - set(PART_NAMES)
    if unknown:
        choices = ", ".join([*ALIASES, *(n for n in PART_NAMES if n not in ALIASES.values())])
        raise ValueError(f"{key}: unknown parts {sorted(unknown)}; choose from {choices}")
    return names


def parameter_counts(named_parameters) -> dict[str, int]:
    """Parameter count of each part (zero-sized parts included) plus "total"; works on meta-device models."""
    counts = dict.fromkeys(PART_NAMES, 0)
    for name, param in named_parameters:
        counts[part_of(name)] += param.numel()
    counts["total"] = sum(counts.values())
    return counts
