"""Start-up check that `train.output_dir` is one directory for every rank (shared storage), not a node-local path.

DeepSpeed writes a checkpoint from every rank into the same folder: rank 0 the model states and `latest`, each rank
its own ZeRO optimizer shard. On node-local disks each node keeps only its own ranks' files, so no node has a
checkpoint it can resume from (host B has rank 1's shard but no `latest`; host A has `latest` but not rank 1's shard),
and nothing fails until the resume. The check: rank 0 writes a file with a random name in `output_dir`, every rank
looks for it, and all agree (one all-reduce) before any of them goes on; on a node that does not see the file every
rank stops with the same ConfigError.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ds_train.config import ConfigError

# NFS may answer a lookup from its attribute cache for a few seconds; a name no node has looked up yet is not cached,
# but the directory may be (created by rank 0 just now), so a node that does not see the file looks again until this.
VISIBLE_WITHIN_S = 5.0
HOSTNAME_BYTES = 64  # per rank, in the all-reduce that tells every rank which hosts failed
MARKER_PREFIX = ".shared-storage-check-"


def check_shared_output_dir(output_dir: Path, rank: int, world_size: int, device: torch.device) -> None:
    """Raise ConfigError on every rank unless every rank sees the file rank 0 writes in `output_dir`. Rank 0 creates
    `output_dir`. Every rank must call this (it runs collectives); with one rank it does nothing."""
    if world_size < 2:
        return
    token = torch.zeros(2, dtype=torch.int64, device=device)  # [written by rank 0?, random name]
    written_error = ""
    if rank == 0:
        name = secrets.randbits(62)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / f"{MARKER_PREFIX}{name:x}").write_text(socket.gethostname())
            token[:] = torch.tensor([1, name])
        except OSError as err:  # the others must still hear of it, or they would wait in the broadcast
            written_error = str(err)
    dist.broadcast(token, src=0)
    written, name = (int(v) for v in token.tolist())
    marker = output_dir / f"{MARKER_PREFIX}{name:x}"
    seen = rank == 0 or (written == 1 and _appears(marker))

    # one row per rank: [does not see it, hostname bytes]; summed, every rank gets every row
    table = torch.zeros(world_size, 1 + HOSTNAME_BYTES, dtype=torch.int32, device=device)
    host = socket.gethostname().encode()[:HOSTNAME_BYTES]
    table[rank, 0] = 0 if seen else 1
    table[rank, 1 : 1 + len(host)] = torch.tensor(list(host), dtype=torch.int32)
    dist.all_reduce(table)
    if rank == 0 and written:
        marker.unlink(missing_ok=True)
    if not written:
        raise ConfigError(f"train.output_dir={output_dir} cannot be written on rank 0's host "
                          f"({_host(table[0])}): {written_error or 'see rank 0'}")  # fmt: skip
    blind = sorted({_host(row) for row in table if row[0] > 0})
    if blind:
        raise ConfigError(
            f"train.output_dir={output_dir} is not shared between nodes ({', '.join(blind)} "
            f"{'does' if len(blind) == 1 else 'do'} not see the files rank 0 writes there on {_host(table[0])}): "
            "every rank writes its checkpoint shards there, so point it at storage every node mounts at the same "
            "path (NFS, Lustre, ...)"
        )


def _appears(path: Path) -> bool:
    deadline = time.monotonic() + VISIBLE_WITHIN_S
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _host(row: torch.Tensor) -> str:
    return bytes(int(v) for v in row[1:].tolist() if v).decode(errors="replace")
