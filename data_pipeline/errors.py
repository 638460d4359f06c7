"""Expected errors and the command-line boundary that reports them.

An expected error is one a person fixes by changing the command, the config or the input (a config error, a missing
file, a bad input file, a bad checkpoint, ...). At the command line it prints one line `error: <message>` (once per
node: on LOCAL_RANK 0, or RANK 0 when only RANK is set; on every rank for an error marked `rank_local`, which only
its rank raised) and exits with the code of its kind; `--traceback` or
DS_TRAIN_TRACEBACK=1 prints the full trace instead (same exit code). Any other exception is a bug and keeps its
traceback (exit code 1). `data_pipeline` defines the input errors; `ds_train.errors` adds the trainer's kinds.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "DS_TRAIN_TRACEBACK"


class InputError(ValueError):
    """An input as a whole cannot be used (not UTF-8, not JSON, wrong top-level shape, not a prepared set); single bad
    rows are rejects instead."""


class UsageError(ValueError):
    """Command-line values that contradict each other or make no sense (same exit code as argparse's own errors)."""


@dataclass(frozen=True)
class ErrorKind:
    """Exceptions of `types` are expected errors of this kind and exit with `code`."""

    name: str
    code: int
    types: tuple[type[BaseException], ...]


# Exit codes, shared by every command (README "Errors and exit codes"). 1 is Python's own code for an unexpected
# error (with its traceback); 2 is argparse's for a bad command line.
EXIT_UNEXPECTED, EXIT_USAGE, EXIT_CONFIG, EXIT_MISSING_FILE, EXIT_BAD_INPUT = 1, 2, 3, 4, 5

DATA_ERRORS: tuple[ErrorKind, ...] = (
    ErrorKind("usage", EXIT_USAGE, (UsageError,)),
    ErrorKind("missing file", EXIT_MISSING_FILE, (FileNotFoundError,)),
    ErrorKind("bad input", EXIT_BAD_INPUT, (InputError,)),
)


def exit_code(err: BaseException, kinds: Sequence[ErrorKind]) -> int | None:
    """The code of the first kind `err` belongs to (list specific kinds first), or None for an unexpected error."""
    for kind in kinds:
        if isinstance(err, kind.types):
            return kind.code
    return None


def traceback_requested(argv: Sequence[str]) -> bool:
    return TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def prints_here() -> bool:
    """Once per node: every rank raises the same expected error, and one copy of the line is enough."""
    rank = os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))
    return rank == "0"


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None, kinds: Sequence[ErrorKind]) -> int:
    """Run `main(argv without --traceback)`; turn an expected error into one `error:` line and its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_trace = traceback_requested(args)
    try:
        return main([a for a in args if a != TRACEBACK_FLAG])
    except Exception as err:
        code = exit_code(err, kinds)
        if code is None:
            raise  # a bug: Python prints the traceback and exits with 1
        if show_trace:
            traceback.print_exc()
        elif prints_here() or getattr(err, "rank_local", False):  # a rank-local error: its rank's line names it
            print(f"error: {err}", file=sys.stderr, flush=True)
        return code
