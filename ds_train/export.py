"""`python -m ds_train export --checkpoint DIR --out DIR`: a checkpoint of any ZeRO stage -> a self-contained folder
(ds_train/components/exported.py): a transformers-format model that `HiggsAudioV2ForConditionalGeneration
.from_pretrained` loads offline (safetensors, config, tokenizer), the Whisper tower in `whisper_tower/` (encoder config
+ weights, and the projector), a copy of the codec's weights in `codec/` and the run config that rebuilds the layout.
`generate` and `evaluate` take the folder as `--checkpoint`. LoRA adapters are merged into the base weights."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from safetensors.torch import save_file

from ds_train.components.checkpoint import load_checkpoint_model
from ds_train.components.exported import (
    CODEC_SUBDIR,
    EXPORT_META,
    RUN_CONFIG_FILE,
    WHISPER_SUBDIR,
    exported_run_config,
)
from ds_train.model.lora import merge_lora
from ds_train.model.modeling import PROJECTOR_FILE

log = logging.getLogger("ds_train")


def copy_codec(codec_path: str | None, out: Path) -> str:
    """The codec's weights (a file, or a `save_pretrained` folder) copied into `out/codec/` -> the copy's name."""
    source = Path(codec_path or "")
    if not codec_path or not source.exists():
        raise FileNotFoundError(
            f"data.codec_path {codec_path} of the checkpoint's run config does not exist: export copies the codec's "
            "weights into the folder; put them back there (or export on the machine that trained)"
        )
    target = out / CODEC_SUBDIR / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)
    return source.name


def export(checkpoint: str | Path, out: str | Path, which: str = "latest") -> Path:
    model, tokenizer, cfg, geometry = load_checkpoint_model(Path(checkpoint), which)
    merged = merge_lora(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec_name = copy_codec(cfg.data.codec_path, out)
    model.llm.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if model.whisper is not None:
        tower = out / WHISPER_SUBDIR
        model.whisper.encoder.save_pretrained(str(tower), safe_serialization=True)
        save_file(
            {k: v.contiguous() for k, v in model.whisper.projector.state_dict().items()}, str(tower / PROJECTOR_FILE)
        )
    (out / RUN_CONFIG_FILE).write_text(json.dumps(exported_run_config(cfg, codec_name), indent=2))
    (out / EXPORT_META).write_text(json.dumps({
        "source": str(Path(checkpoint).resolve()), "lora_layers_merged": merged,
        "whisper_tower": WHISPER_SUBDIR if model.whisper is not None else None,
        "audio_in_token": "<|AUDIO|>", "use_text_head": cfg.model.text_head,
        "codec": cfg.data.codec, "codec_path": f"{CODEC_SUBDIR}/{codec_name}",
        "num_codebooks": geometry.num_codebooks, "codec_codebook_size": geometry.codec_codebook_size,
    }, indent=2))  # fmt: skip
    log.info("exported %s to %s (%d LoRA layers merged)", checkpoint, out, merged)
    return out
