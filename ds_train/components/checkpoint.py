"""Checkpoints: saving and restoring a run, and loading one for inference.

Saving is safe to kill: DeepSpeed saves the states, then (after every rank has finished) rank 0 writes a metadata
file listing every file of the tag with its size, atomically moves `latest` to the new tag, then prunes old tags. A
kill at any moment leaves `latest` on a complete checkpoint. A resume verifies the tag first (every listed file
present, at its recorded size; every `.pt` a whole zip archive): a damaged newest checkpoint (a truncated or deleted
file) falls back to the newest complete one, with a line saying which and why, or fails with one line naming the
file. Besides DeepSpeed's own states, a checkpoint holds the state of each component that carries state across a
resume (data position, health counters, best-eval tracker, RNG), saved under its name and restored by the same name,
for every rank: ranks' data positions and counters differ (a rank skips a micro-batch whose rows all failed on it),
and under ZeRO-0/1/2 DeepSpeed writes the client state from rank 0 only, so the states of all ranks are gathered into
it and each rank restores its own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from data_pipeline.layout.text_tokens import load_tokenizer
from data_pipeline.types import AudioGeometry
from ds_train.components.agreement import gather_objects
from ds_train.components.align import optimizer_param_groups
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
CLIENT_FORMAT = 3  # version of the client state below (2: rank 0's components only; none: before components)


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
            "per_rank": gather_objects({name: c.state_dict() for name, c in self.components.items()}),
            "run_config": run_config.to_dict(),
            # lets `python -m deepspeed.checkpoint.ds_to_universal` convert this checkpoint for another rank count
            "universal_checkpoint_info": {"universal_checkpoint_version": 0.4},
        }
        return save(engine, self.ckpt_dir, client, meta, self.keep_last, best)

    def load_latest(self, engine, world_size: int, ds_config: dict) -> str:
        """Restore the engine and every component from the newest complete checkpoint (`latest`, or the newest
        older tag that verifies when `latest` is damaged); -> its path."""
        latest = latest_tag(self.ckpt_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.ckpt_dir} (run without --resume to start fresh)")
        check_world_size(self.ckpt_dir, latest, world_size, ds_config)  # the run's shape first: its fix differs
        tag = newest_complete_tag(self.ckpt_dir, latest)
        if tag != latest:
            check_world_size(self.ckpt_dir, tag, world_size, ds_config)
        try:
            load_path, client = engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        except Exception as err:  # a file that verified but does not load: name it instead of DeepSpeed's traceback
            rank, first = dist.get_rank() if dist.is_initialized() else 0, (str(err).splitlines() or [""])[0]
            failure = CheckpointError(
                f"rank {rank}: --resume: {self.ckpt_dir / tag} does not load: {type(err).__name__}: {first}"
            )
            failure.rank_local = True  # maybe this rank's shard only: its line must reach the console (run_cli)
            raise failure from err
        if load_path is None:
            raise CheckpointError(f"--resume: DeepSpeed could not load the latest checkpoint in {self.ckpt_dir}")
        states = component_states(client, f"{self.ckpt_dir / tag}", dist.get_rank() if dist.is_initialized() else 0)
        for name, component in self.components.items():
            if name not in states:
                raise CheckpointError(f"{self.ckpt_dir / tag} has no state for {name!r} (written by another version)")
            component.load_state_dict(states[name])
        return load_path


def component_states(client: dict, where: str, rank: int) -> dict[str, dict]:
    """This rank's component states in a checkpoint's client state; from format 2 (rank 0's states for every rank) or
    from the one written before components existed (client keys micro_batches, data_position, rng, monitor,
    best_eval_loss). A universal checkpoint resumed on more ranks than wrote it gives the new ranks rank 0's states."""
    if client.get("format") == CLIENT_FORMAT:
        per_rank = client["per_rank"]
        if rank >= len(per_rank):
            log.warning("%s was written by %d rank(s): rank %d starts from rank 0's data position, counters and RNG",
                        where, len(per_rank), rank)  # fmt: skip
        return per_rank[rank] if rank < len(per_rank) else per_rank[0]
    if client.get("format") == 2:
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
        files = {str(p.relative_to(ckpt_dir / tag)): p.stat().st_size for p in sorted((ckpt_dir / tag).rglob("*"))
                 if p.is_file() and p.name != META_FILE}  # fmt: skip
        _write_atomic(ckpt_dir / tag / META_FILE, json.dumps({**meta, "tag": tag, "files": files}, indent=2))
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


def damage(ckpt_dir: Path, tag: str) -> str | None:
    """Why the checkpoint `tag` cannot be trusted (naming the file), or None when every file its metadata lists is
    there at its recorded size and every `.pt` file is a whole zip archive (torch's format; a truncated one has no
    central directory). Checkpoints written before the metadata listed files are checked for their `.pt` files."""
    folder = ckpt_dir / tag
    if not folder.is_dir():
        return f"{folder} does not exist"
    try:
        meta = read_meta(ckpt_dir, tag)
    except ValueError as err:
        return f"{folder / META_FILE} is not valid JSON ({err})"
    listed = meta.get("files")
    if listed is None and not list(folder.glob("*model_states.pt")):
        return f"{folder} has no *model_states.pt"
    for name, size in (listed or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} when saved"
    for path in sorted(folder.glob("*.pt")):
        if not zipfile.is_zipfile(path):
            return f"{path} is not a whole torch file (truncated?)"
    return None


def newest_complete_tag(ckpt_dir: Path, latest: str) -> str:
    """`latest` when it verifies, else the newest older global_step tag that does (with a warning saying why);
    CheckpointError naming the damaged file when none does."""
    why = damage(ckpt_dir, latest)
    if why is None:
        return latest
    older = sorted(((int(m.group(1)), p.name) for p in ckpt_dir.iterdir()
                    if p.is_dir() and (m := TAG_PATTERN.match(p.name)) and p.name != latest), reverse=True)  # fmt: skip
    for _, tag in older:
        if damage(ckpt_dir, tag) is None:
            log.warning("checkpoint %s is damaged (%s): resuming from %s, the newest complete one", latest, why, tag)
            return tag
    raise CheckpointError(f"--resume: the latest checkpoint is damaged: {why}; no older complete checkpoint in "
                          f"{ckpt_dir} (start without --resume, or restore the file)")  # fmt: skip


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


def _unfused_masters(optimizer_state: dict | None, model: torch.nn.Module, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """ZeRO-0 in bf16/fp16: name -> fp32 master, from the optimizer state's `fp32_groups` (DeepSpeed's
    FP16_UnfusedOptimizer; empty in fp32, which has no masters). Its groups are the trainer's param groups in order,
    empty ones dropped (as DeepSpeed drops them)."""
    masters = (optimizer_state or {}).get("fp32_groups")
    if not masters:
        return {}
    names = {id(p): n for n, p in model.named_parameters()}
    planned = optimizer_param_groups(model, cfg)
    groups = [g["params"] for g in planned if len(g["params"])] if isinstance(planned[0], dict) else [planned]
    return {names[id(p)]: m for group, saved in zip(groups, masters, strict=True)
            for p, m in zip(group, saved, strict=True)}  # fmt: skip


def _full_state_dict(
    ckpt_dir: Path, tag: str, states: dict, zero_stage: int, model: torch.nn.Module, cfg: RunConfig
) -> dict[str, torch.Tensor]:
    """The checkpoint's complete weights: fp32 master copies of the trained parameters, plus the frozen ones.

    DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` rebuilds trainable parameters from the optimizer shards but
    recovers frozen ones only from `frozen_param_fragments`, which DeepSpeed saves only when gradients are partitioned
    (ZeRO-2/3). Under ZeRO-1 every frozen parameter (Whisper's `embed_positions`, a frozen Whisper, LoRA's base weights)
    would be missing. Below ZeRO-3 the module state file holds every parameter in full, so frozen ones come from there.
    """
    module_state, optimizer_state = states["module"], states.get("optimizer")
    if zero_stage == 0:  # no ZeRO partitions: the module state is complete, but in bf16/fp16 the masters are fp32
        return {**module_state, **_unfused_masters(optimizer_state, model, cfg)}
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
    state = _full_state_dict(ckpt_dir, tag, states, int(meta.get("zero_stage", 1)), model, cfg)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{ckpt_dir / tag}: weights do not fit the run config's model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    return model, tokenizer, cfg, geometry


