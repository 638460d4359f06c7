"""DeepSpeed's JIT-built C++ ops (the CPU shared-memory all-reduce, CPU Adam), loaded before DeepSpeed asks for them
and under a lock that dies with its holder.

PyTorch guards each extension build with a plain lock file that every process takes for a moment when it loads the op,
even when nothing needs building. A process killed while holding it (a rank SIGKILLed at start-up, a job cancelled in
its first minute) leaves the file behind, and every later run that loads the op waits on it forever, printing nothing:
a whole test suite once hung that way. Here every process of this project takes an exclusive `flock` first (the kernel
releases it when its holder dies, however it dies), removes a lock file that no live holder can own, and loads the op;
DeepSpeed keeps the loaded module, so its own load later never touches the lock file again."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("ds_train")
GUARD_FILE = ".ds_train_build.flock"
SHARED_MEMORY_ALLREDUCE = "ShareMemCommBuilder"  # DeepSpeed's builder class names
CPU_ADAM = "CPUAdamBuilder"


def extensions_root() -> Path:
    """Where PyTorch JIT-builds C++ extensions: $TORCH_EXTENSIONS_DIR, else torch's cache folder for this Python and
    accelerator build (what torch.utils.cpp_extension uses)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def load_native_op(builder_name: str) -> None:
    """Load (building it the first time) the DeepSpeed op whose builder class is `builder_name`, if this accelerator
    uses it and it is not installed prebuilt. Other programs that JIT-build into the
    same folder without this guard are not serialised with it: give them their own $TORCH_EXTENSIONS_DIR."""
    import deepspeed
    from deepspeed.git_version_info import installed_ops

    builder = deepspeed.get_accelerator().create_op_builder(builder_name)
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed will not use it here (e.g. the shared-memory all-reduce on a GPU)
    if installed_ops.get(builder.NAME, False):
        return  # prebuilt into the wheel: imported without a lock
    root = extensions_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / GUARD_FILE, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # a rank of this run building it now: wait for it, however long
        stale = root / builder.NAME / "lock"
        if stale.exists():  # holding the guard, no process of ours is inside torch's lock: its holder died
            log.warning("removing %s, left by a process killed while it loaded the %r op", stale, builder.NAME)
            stale.unlink(missing_ok=True)
        builder.load(verbose=False)
