"""Machine checks made before anything expensive: a `3b` model takes minutes to build, and only then would DeepSpeed
fail to JIT-compile the CPU Adam op that optimizer offload uses (with pages of compiler output)."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from ds_train.config import ConfigError


def uses_cpu_adam(ds_config: dict) -> bool:
    """Whether DeepSpeed will run its compiled CPU Adam: the optimizer is offloaded and is Adam/AdamW without
    `"torch_adam": true`."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    optimizer = ds_config.get("optimizer") or {}
    return (
        offload.get("device", "none") in ("cpu", "nvme")
        and str(optimizer.get("type", "")).lower() in ("adam", "adamw")
        and not optimizer.get("params", {}).get("torch_adam", False)
    )


def missing_build_tools(search_path: str | None = None, include_dir: str | None = None) -> list[str]:
    """What a PyTorch C++ extension build needs and this machine lacks: a compiler ($CXX, else c++), ninja, and the
    Python headers. `search_path` defaults to $PATH, `include_dir` to this Python's include directory."""
    missing = []
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler, path=search_path) is None:
        missing.append(f"a C++ compiler ({compiler!r}; set $CXX to use another)")
    if shutil.which("ninja", path=search_path) is None:
        missing.append("ninja (pip install ninja)")
    header = Path(include_dir or sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        missing.append(f"the Python headers ({header}; e.g. the python3-dev package)")
    return missing


def check_cpu_adam(ds_config: dict, source: str) -> None:
    """Raise ConfigError if the DeepSpeed config needs CPU Adam and it can neither be loaded prebuilt nor built."""
    if not uses_cpu_adam(ds_config):
        return
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get("cpu_adam", False):
        return
    missing = missing_build_tools()
    if missing:
        raise ConfigError(
            f"{source} offloads the optimizer, so DeepSpeed compiles its CPU Adam op on first use, but this machine "
            f'lacks {", ".join(missing)}. Install them, or add "torch_adam": true to the optimizer\'s params '
            f"(PyTorch's AdamW on the CPU: no build, slower steps)."
        )
