"""`python -m ds_train.runner ARGS`: the `deepspeed` command (same arguments) that passes a stop signal on.

On one node DeepSpeed's runner installs no signal handler: SIGTERM kills it and leaves the per-node launcher and the
ranks training, orphaned. This runner sends the first SIGTERM/SIGINT it gets straight to the ranks, which save at the
end of the step and exit 0, so the launcher and the runner exit 0 too. Sending it to the ranks, not to DeepSpeed's
launcher, also avoids the launcher's fixed 30 s grace period (it SIGKILLs ranks 30 s after it is signalled): the
ranks get `DS_TRAIN_STOP_GRACE` seconds (default 300) before the launcher is signalled to end them. A second signal
does that at once. (With pdsh on several nodes DeepSpeed's runner installs its own handler, which replaces this one.)

On several nodes DeepSpeed's runner starts each node's ranks over ssh, in a fresh login environment: it passes on only
the variables named in `.deepspeed_env` (in the working directory or home; `DS_ENV_FILE` renames it) and those whose
names start with PYTHON, NCCL (on GPUs), MLFLOW, MV2 or UCX. This runner adds the prefixes in `RANK_ENV_PREFIXES`, so
the remote ranks get the same PATH (the venv: DeepSpeed's op loader runs `ninja`), offline mode, network interfaces
and trainer settings as the node that launches (docs/LAUNCH.md, "Several machines").
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import psutil

from ds_train.components.stopping import STOP_SIGNALS

GRACE_ENV = "DS_TRAIN_STOP_GRACE"
DEFAULT_GRACE_S = 300.0
# Variables (by name prefix) that every node's ranks get from the launching node's environment.
RANK_ENV_PREFIXES = ("PATH", "HF_", "TOKENIZERS_", "GLOO_", "NCCL_", "TORCH_", "DS_TRAIN_", "OMP_")


class StopForwarder:
    """Signal handler of the runner: the first stop signal goes to the ranks, a later one (or the grace period
    running out) to the launcher, which then terminates the ranks itself."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.received = 0
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.received += 1
        launchers = psutil.Process().children()
        if not launchers:  # nothing started yet: stop as if there were no handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received > 1:
            self.escalate()
            return
        ranks = [rank for launcher in launchers for rank in _children(launcher)]
        _send(ranks or launchers, signum)
        self._timer = threading.Timer(self.grace_s, self.escalate)
        self._timer.daemon = True
        self._timer.start()

    def escalate(self) -> None:
        """SIGTERM to the launcher: it terminates each rank's process tree (SIGKILL after its own 30 s)."""
        _send(psutil.Process().children(), signal.SIGTERM)


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children()
    except psutil.Error:
        return []


def _send(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:  # already gone
            pass


def grace_seconds() -> float:
    raw = os.environ.get(GRACE_ENV, str(DEFAULT_GRACE_S))
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"error: {GRACE_ENV}={raw!r} is not a number of seconds (e.g. {GRACE_ENV}=600)") from None
    if value <= 0:
        raise SystemExit(f"error: {GRACE_ENV}={raw!r} must be > 0 seconds")
    return value


def export_rank_environment() -> None:
    """Make DeepSpeed's multi-node runner pass `RANK_ENV_PREFIXES` on (it reads its prefix list when it starts)."""
    from deepspeed.launcher import runner

    runner.EXPORT_ENVS.extend(p for p in RANK_ENV_PREFIXES if p not in runner.EXPORT_ENVS)


def main(argv: list[str] | None = None) -> int:
    from deepspeed.launcher.runner import main as deepspeed_main

    StopForwarder(grace_seconds()).install()
    export_rank_environment()
    deepspeed_main(sys.argv[1:] if argv is None else argv)  # sys.exit(code) when the launcher fails
    return 0


if __name__ == "__main__":
    sys.exit(main())
