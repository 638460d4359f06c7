"""`python -m ds_train export --checkpoint DIR --out DIR`: a checkpoint of any ZeRO stage -> a transformers-format
folder that `HiggsAudioV2ForConditionalGeneration.from_pretrained` loads offline (safetensors, config, tokenizer),
with the Whisper tower beside it in `whisper_tower/` (encoder config + weights, and the projector). LoRA adapters are
merged into the base weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import save_file

from ds_train.components.checkpoint import load_checkpoint_model
from ds_train.model.lora import merge_lora
from ds_train.model.modeling import PROJECTOR_FILE

log = logging.getLogger("ds_train")
WHISPER_SUBDIR = "whisper_tower"


def export(checkpoint: str | Path, out: str | Path, which: str = "latest") -> Path:
    model, tokenizer, cfg, _ = load_checkpoint_model(Path(checkpoint), which)
    merged = merge_lora(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.llm.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if model.whisper is not None:
        tower = out / WHISPER_SUBDIR
        model.whisper.encoder.save_pretrained(str(tower), safe_serialization=True)
        save_file(
            {k: v.contiguous() for k, v in model.whisper.projector.state_dict().items()}, str(tower / PROJECTOR_FILE)
        )
    (out / "ds_train_export.json").write_text(json.dumps({
        "source": str(Path(checkpoint).resolve()), "lora_layers_merged": merged,
        "whisper_tower": WHISPER_SUBDIR if model.whisper is not None else None,
        "audio_in_token": "<|AUDIO|>", "use_text_head": cfg.model.text_head,
    }, indent=2))  # fmt: skip
    log.info("exported %s to %s (%d LoRA layers merged)", checkpoint, out, merged)
    return out
