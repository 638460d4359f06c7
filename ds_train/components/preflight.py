"""Machine checks made before anything expensive: a `3b` model takes minutes to build, and only then would DeepSpeed
fail to JIT-compile the CPU Adam op that optimizer offload uses (with pages of compiler output)."""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
from pathlib import Path

from ds_train.config import ConfigError

log = logging.getLogger("ds_train")


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


def check_output_dir(path: str | Path) -> Path:
    """Create `train.output_dir` (every rank: each writes its checkpoint shards there) and prove it takes a file, so a
    path under a plain file or a read-only folder is one config error at start-up, not a traceback at the first save.
    -> the absolute folder."""
    out = Path(path).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, FileExistsError) or (out.exists() and not out.is_dir()):
            reason = "a file of that name exists"
        raise ConfigError(
            f"train.output_dir {out} is not a writable folder ({reason}); choose another train.output_dir"
        ) from None
    return out
