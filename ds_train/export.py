"""`python -m ds_train export --checkpoint DIR --out DIR`: a checkpoint of any ZeRO stage -> a transformers-format
folder that `HiggsAudioV2ForConditionalGeneration.from_pretrained` loads offline (safetensors, config, tokenizer),
with the Whisper tower beside it in `whisper_tower/` (encoder config + weights, and the projector). LoRA adapters are
merged into the base weights."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import save_file

from data_pipeline.layout import AudioGeometry
from data_pipeline.text_tokens import load_tokenizer
from ds_train import checkpointing
from ds_train.build import build_model, build_tokenizer
from ds_train.config import RunConfig
from ds_train.engine import CHECKPOINT_SUBDIR
from ds_train.lora import merge_lora
from ds_train.model import PROJECTOR_FILE

log = logging.getLogger("ds_train")
WHISPER_SUBDIR = "whisper_tower"


def run_config_from_dict(raw: dict) -> RunConfig:
    cfg = RunConfig()
    for section, values in raw.items():
        target = getattr(cfg, section, None)
        if target is None:
            continue
        names = {f.name for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key in names:
                setattr(target, key, value)
    return cfg


def _locate(checkpoint: Path, which: str = "latest") -> tuple[Path, str]:
    """Accept a run output dir, its checkpoints/ dir, or one tag dir -> (checkpoints dir, tag). In a checkpoints dir
    `which` picks the tag: "latest", "best" (the best evaluation, with an eval set) or a tag name."""
    checkpoint = checkpoint.resolve()
    if (checkpoint / CHECKPOINT_SUBDIR).is_dir():
        checkpoint = checkpoint / CHECKPOINT_SUBDIR
    if (checkpoint / "latest").is_file():
        tag = checkpointing.pointed_tag(checkpoint, which) if which in ("latest", checkpointing.BEST_FILE) else which
        if tag is None or not (checkpoint / tag).is_dir():
            raise FileNotFoundError(f"{checkpoint} has no {which!r} checkpoint (tags: {_tags(checkpoint)})")
        return checkpoint, tag
    if list(checkpoint.glob("*model_states.pt")):
        return checkpoint.parent, checkpoint.name
    raise FileNotFoundError(f"{checkpoint} is not a DeepSpeed checkpoint (no 'latest' file or *model_states.pt)")


def _tags(ckpt_dir: Path) -> str:
    return ", ".join(sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir())) or "none"


def load_checkpoint_model(checkpoint: Path, which: str = "latest"):
    """-> (VoiceCloningModel with the checkpoint's fp32 weights, tokenizer, RunConfig); `which` as in `_locate`."""
    ckpt_dir, tag = _locate(checkpoint, which)
    # mp_rank_00_model_states.pt, or zero_pp_rank_0_mp_rank_00_model_states.pt under ZeRO-3; rank 0's holds the config
    model_states = sorted((ckpt_dir / tag).glob("*model_states.pt"))[0]
    states = torch.load(model_states, map_location="cpu", weights_only=False)
    cfg = run_config_from_dict(states["run_config"])
    cfg.train.activation_checkpointing = False
    meta = checkpointing.read_meta(ckpt_dir, tag)
    tokenizer_dir = ckpt_dir.parent / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else build_tokenizer(cfg)
    geometry = AudioGeometry(int(meta["num_codebooks"]), int(meta["codec_codebook_size"]))
    model = build_model(cfg, tokenizer, geometry)
    state = _full_state_dict(ckpt_dir, tag, states["module"], int(meta.get("zero_stage", 1)), model)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt_dir / tag}: weights do not fit the run config's model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    return model, tokenizer, cfg


def _full_state_dict(
    ckpt_dir: Path, tag: str, module_state: dict[str, torch.Tensor], zero_stage: int, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """The checkpoint's complete weights: fp32 master copies of the trained parameters, plus the frozen ones.

    DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` rebuilds trainable parameters from the optimizer shards but
    recovers frozen ones only from `frozen_param_fragments`, which DeepSpeed saves only when gradients are partitioned
    (ZeRO-2/3). Under ZeRO-1 every frozen parameter (Whisper's `embed_positions`, a frozen Whisper, LoRA's base weights)
    would be missing. Below ZeRO-3 the module state file holds every parameter in full, so frozen ones come from there.
    """
    if zero_stage == 0:
        return module_state  # no ZeRO partitions: the module state is complete
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, value in module_state.items():
        # Under ZeRO-3 the module state holds empty placeholders for partitioned weights: only full shapes count.
        if name not in state and name in expected and value.shape == expected[name].shape:
            state[name] = value
    return state


def export(checkpoint: str | Path, out: str | Path, which: str = "latest") -> Path:
    model, tokenizer, cfg = load_checkpoint_model(Path(checkpoint), which)
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
