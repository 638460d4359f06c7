"""Process-group setup: works under the deepspeed launcher, torchrun, or a plain `python` process (single rank)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from ds_train.components.native_ops import SHARED_MEMORY_ALLREDUCE, load_native_op


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """-> (rank, local_rank, world_size). Without a launcher, sets up a one-rank group on a free local port (DeepSpeed
    would otherwise try MPI discovery and fail for want of mpi4py)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(
                RANK="0",
                LOCAL_RANK="0",
                WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
            )
        load_native_op(SHARED_MEMORY_ALLREDUCE)  # before DeepSpeed loads it: a stale build lock would hang it here
        deepspeed.init_distributed()
        _release_shm_allreduce_buffer()
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size()


SHM_DIR = Path("/dev/shm")
SHM_ALLREDUCE_PREFIX = "deepspeed_allreduce_buffer"  # SHM_BUFFER_NAME in DeepSpeed's csrc/cpu/comm/shm.cpp


def shm_allreduce_buffer(rank: int) -> Path:
    """The POSIX shared-memory file DeepSpeed's CPU all-reduce creates for `rank` (one per rank, 64 MiB)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"{SHM_ALLREDUCE_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def _release_shm_allreduce_buffer() -> None:
    """Unlink this rank's shared-memory all-reduce buffer once every rank has mapped it.

    On the CPU accelerator with every rank on one host (LOCAL_SIZE == world size), DeepSpeed creates one 64 MiB file
    per rank under /dev/shm and never unlinks it. /dev/shm is RAM: each run left 128 MiB behind for good, a SIGKILLed
    one too, until a day of test runs filled the tmpfs and the next run was OOM-killed. DeepSpeed's set-up returns only
    after a rank has mapped all its peers' files, so after a barrier the names are unused; the mappings live on until
    the processes exit, and the kernel frees the memory then, however they exit."""
    if deepspeed.get_accelerator().device_name() != "cpu":
        return
    if os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):
        return  # DeepSpeed's own condition for the shm path; the same on every rank, so all or none reach the barrier
    dist.barrier()
    shm_allreduce_buffer(dist.get_rank()).unlink(missing_ok=True)


def device_for(local_rank: int) -> torch.device:
    accelerator = deepspeed.get_accelerator()
    name = accelerator.device_name()
    return torch.device(name, local_rank) if name != "cpu" else torch.device("cpu")


def native_bf16() -> tuple[bool, str]:
    """Whether bf16 math runs natively here, and why. CPUs without AVX512-BF16/AMX emulate bf16 matmuls, which made
    the tiny model ~5x slower than fp32 on the project's AMD EPYC CI machine."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(), f"GPU {torch.cuda.get_device_name(0)}"
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False, "CPU flags unreadable"
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    return native, "CPU with avx512_bf16/amx_bf16" if native else "CPU without avx512_bf16/amx_bf16"
