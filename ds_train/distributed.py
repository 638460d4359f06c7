"""Process-group setup: works under the deepspeed launcher, torchrun, or a plain `python` process (single rank)."""

from __future__ import annotations

import os
import socket

import deepspeed
import torch
import torch.distributed as dist


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
        deepspeed.init_distributed()
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size()


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
