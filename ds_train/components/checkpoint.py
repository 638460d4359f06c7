"""Checkpoints: saving and restoring a run, and loading one for inference.

Saving is safe to kill: DeepSpeed saves the states, then (after every rank has finished) rank 0 writes a metadata file
and atomically moves `latest` to the new tag, then prunes old tags. A kill at any moment leaves `latest` on a complete
checkpoint. Besides DeepSpeed's own states, a checkpoint holds the state of each component that carries state across
a resume (data position, health counters, best-eval tracker, RNG), saved under its name and restored by the same name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from data_pipeline.layout.text_tokens import load_tokenizer
from data_pipeline.types import AudioGeometry
from ds_train.config import ConfigError, RunConfig
from ds_train.errors import CheckpointError, WorldSizeError
from ds_train.model.build import build_model, build_tokenizer

log = logging.getLogger("ds_train")
CHECKPOINT_SUBDIR = "checkpoints"  # inside train.output_dir
TOKENIZER_SUBDIR = "tokenizer"  # inside train.output_dir
META_FILE = "ds_train_meta.json"
LATEST_FILE = "latest"  # names the newest complete checkpoint
BEST_FILE = "best"  # names the tag of the best evaluation so far (with an eval set)
TAG_PATTERN = re.compile(r"^global_step(\d+)$")
CLIENT_FORMAT = 2  # version of the client state below; checkpoints without one were written before components


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Checkpointer:
    """Saves and restores DeepSpeed's states plus the named components' states, in `ckpt_dir`."""

    def __init__(self, ckpt_dir: Path, keep_last: int, components: dict[str, Stateful]) -> None:
        self.ckpt_dir = ckpt_dir
        self.keep_last = keep_last
        self.components = components

    def save(self, engine, run_config: RunConfig, meta: dict, best: bool = False) -> str:
        """Checkpoint the engine's current step (all ranks call this); `best` also points `best` at it."""
        client = {
            "format": CLIENT_FORMAT,
            "components": {name: c.state_dict() for name, c in self.components.items()},
            "run_config": run_config.to_dict(),
            # lets `python -m deepspeed.checkpoint.ds_to_universal` convert this checkpoint for another rank count
            "universal_checkpoint_info": {"universal_checkpoint_version": 0.4},
        }
        return save(engine, self.ckpt_dir, client, meta, self.keep_last, best)

    def load_latest(self, engine, world_size: int, ds_config: dict) -> str:
        """Restore the engine and every component from the `latest` checkpoint; -> its path."""
        tag = latest_tag(self.ckpt_dir)
        if tag is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.ckpt_dir} (run without --resume to start fresh)")
        check_world_size(self.ckpt_dir, tag, world_size, ds_config)
        load_path, client = engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        if load_path is None:
            raise CheckpointError(f"--resume: DeepSpeed could not load the latest checkpoint in {self.ckpt_dir}")
        states = component_states(client, f"{self.ckpt_dir / tag}")
        for name, component in self.components.items():
            if name not in states:
                raise CheckpointError(f"{self.ckpt_dir / tag} has no state for {name!r} (written by another version)")
            component.load_state_dict(states[name])
        return load_path


def component_states(client: dict, where: str) -> dict[str, dict]:
    """The components' states of a checkpoint's client state, from this format or from the one written before
    components existed (client keys micro_batches, data_position, rng, monitor, best_eval_loss)."""
    if client.get("format") == CLIENT_FORMAT:
        return client["components"]
    if "micro_batches" in client and "rng" in client:
        return {
            "data": {"fetched": int(client["micro_batches"]), "position": client.get("data_position")},
            "rng": {"per_rank": client["rng"]},
            "health": client.get("monitor") or {},
            "best_eval": {"best": float(client.get("best_eval_loss", float("inf")))},
        }
    raise CheckpointError(
        f"{where}: not a ds_train checkpoint this version can resume (client state format {client.get('format')!r}, "
        f"keys {sorted(client)[:8]}); export it with the version that wrote it, or start a fresh run"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(engine, ckpt_dir: Path, client_state: dict, meta: dict, keep_last: int, best: bool = False) -> str:
    """Save a DeepSpeed checkpoint tagged `global_step<N>`; returns the tag. With `best`, the `best` file points at it
    too (the best evaluation so far), and pruning keeps it until a better one replaces it."""
    tag = f"global_step{engine.global_steps}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()  # every rank's shards are on disk before anything points at them
    if dist.get_rank() == 0:
        _write_atomic(ckpt_dir / tag / META_FILE, json.dumps({**meta, "tag": tag}, indent=2))
        _write_atomic(ckpt_dir / LATEST_FILE, tag)
        if best:
            _write_atomic(ckpt_dir / BEST_FILE, tag)
        prune(ckpt_dir, keep_last, protect={tag, pointed_tag(ckpt_dir, BEST_FILE)})
        log.info("saved checkpoint %s/%s%s", ckpt_dir, tag, " (best evaluation so far)" if best else "")
    dist.barrier()
    return tag


def prune(ckpt_dir: Path, keep_last: int, protect: set[str | None]) -> None:
    """Delete all but the newest `keep_last` global_step tags (never those in `protect`). keep_last <= 0 keeps
    everything."""
    if keep_last <= 0:
        return
    tags = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := TAG_PATTERN.match(p.name)))
    for _, path in tags[:-keep_last]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def pointed_tag(ckpt_dir: Path, name: str) -> str | None:
    """The tag a pointer file (`latest`, `best`) in the checkpoints folder names, or None without one."""
    path = ckpt_dir / name
    return path.read_text().strip() if path.is_file() else None


def latest_tag(ckpt_dir: Path) -> str | None:
    return pointed_tag(ckpt_dir, LATEST_FILE)


def read_meta(ckpt_dir: Path, tag: str) -> dict:
    path = ckpt_dir / tag / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def check_world_size(ckpt_dir: Path, tag: str, world_size: int, ds_config: dict) -> None:
    """ZeRO shards are per rank: a checkpoint from N ranks loads on M != N ranks only as a universal checkpoint."""
    saved = read_meta(ckpt_dir, tag).get("world_size")
    if saved is None or saved == world_size or ds_config.get("checkpoint", {}).get("load_universal"):
        return
    src = ckpt_dir / tag
    raise WorldSizeError(
        f"checkpoint {src} was written by {saved} data-parallel rank(s) but this run has {world_size}. Convert it to "
        f"DeepSpeed's universal format and resume from that:\n"
        f"  python -m deepspeed.checkpoint.ds_to_universal --input_folder {src} --output_folder {src}_universal\n"
        f"  echo {tag}_universal > {ckpt_dir / 'latest'}\n"
        f'and add "checkpoint": {{"load_universal": true}} to the DeepSpeed JSON.'
    )


def locate(checkpoint: Path, which: str = "latest") -> tuple[Path, str]:
    """Accept a run output dir, its checkpoints/ dir, or one tag dir -> (checkpoints dir, tag). In a checkpoints dir
    `which` picks the tag: "latest", "best" (the best evaluation, with an eval set) or a tag name."""
    checkpoint = checkpoint.resolve()
    if (checkpoint / CHECKPOINT_SUBDIR).is_dir():
        checkpoint = checkpoint / CHECKPOINT_SUBDIR
    if (checkpoint / LATEST_FILE).is_file():
        tag = pointed_tag(checkpoint, which) if which in (LATEST_FILE, BEST_FILE) else which
        if tag is None or not (checkpoint / tag).is_dir():
            raise FileNotFoundError(f"{checkpoint} has no {which!r} checkpoint (tags: {_tags(checkpoint)})")
        return checkpoint, tag
    if list(checkpoint.glob("*model_states.pt")):
        return checkpoint.parent, checkpoint.name
    raise FileNotFoundError(f"{checkpoint} is not a DeepSpeed checkpoint (no 'latest' file or *model_states.pt) nor "
                            "an exported folder (no ds_train_export.json)")  # fmt: skip


def _tags(ckpt_dir: Path) -> str:
    return ", ".join(sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir())) or "none"


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


def load_checkpoint_model(checkpoint: Path, which: str = LATEST_FILE):
    """-> (VoiceCloningModel with the checkpoint's fp32 weights, tokenizer, RunConfig, AudioGeometry); `which` as
    in `locate`. Needs no process group and never imports the trainer."""
    ckpt_dir, tag = locate(checkpoint, which)
    # mp_rank_00_model_states.pt, or zero_pp_rank_0_mp_rank_00_model_states.pt under ZeRO-3; rank 0's holds the config
    model_states = sorted((ckpt_dir / tag).glob("*model_states.pt"))[0]
    states = torch.load(model_states, map_location="cpu", weights_only=False)
    where = str(ckpt_dir / tag)
    # recomputing activations is a training-time trade: inference keeps them
    cfg = RunConfig.from_dict(states["run_config"], source=where).with_values({"train.activation_checkpointing": False})
    meta = read_meta(ckpt_dir, tag)
    tokenizer_dir = ckpt_dir.parent / TOKENIZER_SUBDIR
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else build_tokenizer(cfg)
    geometry = AudioGeometry(int(meta["num_codebooks"]), int(meta["codec_codebook_size"]))
    model = build_model(cfg, tokenizer, geometry)
    state = _full_state_dict(ckpt_dir, tag, states["module"], int(meta.get("zero_stage", 1)), model)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{ckpt_dir / tag}: weights do not fit the run config's model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    return model, tokenizer, cfg, geometry


