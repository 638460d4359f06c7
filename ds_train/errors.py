"""The trainer's expected errors and their exit codes (README "Errors and exit codes").

`python -m ds_train ...` runs through `data_pipeline.errors.run_cli` with `TRAINER_ERRORS`: an expected error prints
one `error: ...` line (once per node) and exits with its kind's code; `--traceback` or DS_TRAIN_TRACEBACK=1 shows the
trace. The kinds below are listed most specific first (a `WorldSizeError` is also a `ConfigError`).
"""

from __future__ import annotations

from data_pipeline.errors import DATA_ERRORS, EXIT_CONFIG, ErrorKind, InputError, UsageError
from ds_train.config import ConfigError
from ds_train.monitor.health import HealthError

__all__ = [
    "TRAINER_ERRORS", "CheckpointError", "ConfigError", "HealthError", "InputError", "PeerLost", "UsageError",
    "WorldSizeError",
]  # fmt: skip

EXIT_CHECKPOINT, EXIT_WORLD_SIZE, EXIT_HEALTH, EXIT_LOST_PEER = 6, 7, 8, 9


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (DeepSpeed cannot load it, its files do not fit the run)."""


class PeerLost(RuntimeError):
    """A rank of the run stopped answering: its process died, hangs, or its host was cut off."""


class WorldSizeError(ConfigError):
    """The checkpoint was written by another number of data-parallel ranks than this run has."""


TRAINER_ERRORS: tuple[ErrorKind, ...] = (
    ErrorKind("world-size mismatch", EXIT_WORLD_SIZE, (WorldSizeError,)),
    ErrorKind("config", EXIT_CONFIG, (ConfigError,)),
    ErrorKind("bad checkpoint", EXIT_CHECKPOINT, (CheckpointError,)),
    ErrorKind("health halt", EXIT_HEALTH, (HealthError,)),
    ErrorKind("lost peer", EXIT_LOST_PEER, (PeerLost,)),
    *DATA_ERRORS,
)
