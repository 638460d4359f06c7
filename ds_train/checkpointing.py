"""Checkpoints that are safe to kill: DeepSpeed saves the states, then (after every rank has finished) rank 0 writes
a metadata file and atomically moves `latest` to the new tag, then prunes old tags. A kill at any moment leaves
`latest` on a complete checkpoint."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch.distributed as dist

from ds_train.errors import WorldSizeError

log = logging.getLogger("ds_train")
META_FILE = "ds_train_meta.json"
BEST_FILE = "best"  # names the tag of the best evaluation so far (with an eval set)
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


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
        _write_atomic(ckpt_dir / "latest", tag)
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
    return pointed_tag(ckpt_dir, "latest")


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
