"""Stop signals sent from outside a real deepspeed launch (CPU): to the runner (the process that
launch/train_single_node.sh becomes), to DeepSpeed's per-node launcher, to the whole process group (a terminal's
Ctrl-C) of a 2-rank run, and to the only rank of a 1-rank run. Each must end in a checkpoint of the same step on every
rank, a clean exit (no traceback or killed worker in the log, even after the save, and nothing left running), and a
`--resume` that continues exactly as an uninterrupted run. DataLoader workers 0, 1, 2 and token-budget batching are
covered."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_pipeline.prepare.build_set import PrepareConfig, prepare
from ds_train.trainer import Trainer, train
from tests.helpers import CONFIGS, REPO, command_env, free_port, inject, make_config, read_scalars

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
REFERENCE_STEPS = 8
STARTUP_TIMEOUT_S = 900  # 2 ranks importing torch + DeepSpeed on a loaded 2-core machine
STOP_TIMEOUT_S = 120  # DeepSpeed's launcher SIGKILLs after 30 s per rank; this only bounds a hang


@pytest.fixture(scope="module")
def prepared(assets, tmp_path_factory) -> Path:
    """The test corpus encoded once, so the ranks do not each encode it at start-up."""
    out = tmp_path_factory.mktemp("signals_prepared")
    prepare(PrepareConfig(str(assets.manifest), "dac", str(assets.codec_file), str(out), 12), show_progress=False)
    return out


def _train_args(assets, prepared: Path, out: Path, *extra: str) -> list[str]:
    # min_lr = lr: a constant LR after warmup, so runs with different train.max_steps take identical steps
    return [
        "--config", str(CONFIGS / "demo.yaml"), f"data.prepared={prepared}", f"data.codec_path={assets.codec_file}",
        f"train.output_dir={out}", "data.micro_batch_size=4", f"train.deepspeed_config={CONFIGS / 'zero2_fp32.json'}",
        "train.min_lr=3e-3", "train.log_every=1", "train.save_every=1000", *extra,
    ]  # fmt: skip


def _deepspeed(port: int, *args: str, ranks: int = 2) -> list[str]:
    return [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(port), "--module", "ds_train", "train", *args]


def _single_node_script(*args: str, ranks: int = 2) -> list[str]:
    assert args[0] == "--config"  # the script takes the run config as its second argument
    return ["bash", str(REPO / "launch" / "train_single_node.sh"), str(ranks), *args[1:]]


def _run_env(port: int) -> dict[str, str]:
    # the launch scripts use the venv running the tests instead of creating one
    return dict(command_env(), MASTER_PORT=str(port), VENV=str(Path(sys.executable).parent.parent))


def _session(sid: int) -> list[psutil.Process]:
    """Live processes of the session the run was started in (the runner, launcher, ranks, DataLoader workers)."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _kill_session(sid: int) -> None:
    for proc in _session(sid):
        try:
            proc.kill()
        except psutil.Error:
            pass


# A rank or DataLoader worker that fails, even at interpreter exit after the checkpoint is written, leaves one of these
# (e.g. "Exception ignored in atexit callback ... DataLoader worker (pid N) is killed by signal: Terminated").
FAILURE_MARKS = ("Traceback", "killed by signal", "Exception ignored", "exits with return code")


def assert_clean_log(text: str) -> None:
    """No rank, worker or launcher reported a failure anywhere in the log, including after the save."""
    found = [mark for mark in FAILURE_MARKS if mark in text]
    assert not found, f"{found} in the log:\n{text[-5000:]}"


def _complete(cmd: list[str], port: int, log: Path) -> None:
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=_run_env(port), stdout=out, stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-5000:]}"
    assert_clean_log(log.read_text())  # the workers were shut down at the end of fit, not killed at exit


@pytest.fixture(scope="module")
def reference(assets, prepared, tmp_path_factory):
    """Uninterrupted runs of REFERENCE_STEPS steps, one per batching kind and number of ranks (the number of workers
    changes nothing)."""
    losses: dict[tuple[int, int], dict[int, float]] = {}

    def get(max_tokens: int, ranks: int) -> dict[int, float]:
        if (max_tokens, ranks) not in losses:
            out = tmp_path_factory.mktemp(f"signals_reference_{max_tokens}_{ranks}")
            port = free_port()
            args = _train_args(assets, prepared, out, f"train.max_steps={REFERENCE_STEPS}",
                               f"data.max_tokens={max_tokens}", "data.num_workers=0")  # fmt: skip
            _complete(_deepspeed(port, *args, ranks=ranks), port, out / "log.txt")
            losses[max_tokens, ranks] = read_scalars(out / "tensorboard")["train/loss"]
        return losses[max_tokens, ranks]

    return get


def _target(run: subprocess.Popen, kind: str) -> tuple[int, bool]:
    """(pid, whole group?) to signal: the runner, DeepSpeed's per-node launcher, the process group, or a rank."""
    if kind == "runner":
        return run.pid, False
    if kind == "group":
        return run.pid, True
    launchers = [p for p in psutil.Process(run.pid).children(recursive=True)
                 if "deepspeed.launcher.launch" in " ".join(p.cmdline())]  # fmt: skip
    assert len(launchers) == 1, launchers
    if kind == "rank":
        return launchers[0].children()[0].pid, False
    return launchers[0].pid, False


def _wait_for_step(run: subprocess.Popen, log: Path, step: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while f"step {step:5d}/" not in log.read_text():
        assert run.poll() is None, f"the run ended before step {step} ({run.returncode}):\n{log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"no step {step} after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


class Case(NamedTuple):
    sig: signal.Signals
    workers: int  # data.num_workers
    max_tokens: int  # data.max_tokens (0: fixed-size micro-batches)
    exit_code: int  # of the command started
    ranks: int = 2
    script: bool = True  # started by launch/train_single_node.sh (the runner), else by the `deepspeed` command


CASES = {
    # DeepSpeed's launcher always exits 1 after it has forwarded a signal (sys.exit(1) in its handler, whatever the
    # ranks did); the runner of the launch scripts sends the signal to the ranks, which exit 0, so it exits 0, and so
    # does a launcher one of whose ranks was signalled (the ranks agree to stop and both exit 0). A rank that fails
    # shows in the log either way.
    "runner": Case(signal.SIGTERM, 1, 0, 0),
    "launcher": Case(signal.SIGTERM, 2, 2400, 1, script=False),
    "group": Case(signal.SIGINT, 0, 0, 1),
    "rank": Case(signal.SIGTERM, 1, 0, 0, script=False),  # one of the two ranks, signalled from outside
}


@pytest.mark.parametrize("target", list(CASES))
def test_stop_signal_saves_every_rank_and_resume_is_exact(target: str, assets, prepared, reference, tmp_path) -> None:
    sig, workers, max_tokens, exit_code, ranks, script = CASES[target]
    out, log = tmp_path / "run", tmp_path / "stopped.log"
    args = _train_args(assets, prepared, out, "train.max_steps=100000", f"data.num_workers={workers}",
                       f"data.max_tokens={max_tokens}")  # fmt: skip
    port = free_port()
    cmd = _single_node_script(*args, ranks=ranks) if script else _deepspeed(port, *args, ranks=ranks)
    with log.open("w") as sink:
        run = subprocess.Popen(cmd, cwd=REPO, env=_run_env(port), stdout=sink, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        _wait_for_step(run, log, 3)
        assert len(_session(run.pid)) >= 2 + ranks * (1 + workers)  # runner, launcher, the ranks and their workers
        pid, group = _target(run, target)
        (os.killpg if group else os.kill)(pid, sig)
        code = run.wait(timeout=STOP_TIMEOUT_S)
        left = [" ".join(p.cmdline()[:6]) for p in _session(run.pid)]
    finally:
        _kill_session(run.pid)
    text = log.read_text()
    assert code == exit_code, f"exit code {code}, expected {exit_code}:\n{text[-5000:]}"
    assert not left, f"still running after the command returned: {left}"
    stops = re.findall(r"\[rank(\d)\] stopping at step (\d+) \((SIG\w+)\) after saving", text)
    assert_clean_log(text)
    assert sorted(s[0] for s in stops) == [str(r) for r in range(ranks)], f"not every rank stopped:\n{text[-5000:]}"
    assert {s[1:] for s in stops} == {(stops[0][1], sig.name)}, stops  # the same step, the signal sent
    step = int(stops[0][1])
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"global_step{step}"
    assert len(list((ckpts / f"global_step{step}").glob("*optim_states.pt"))) == ranks  # a ZeRO-2 shard per rank
    assert step < REFERENCE_STEPS, f"stopped at step {step}: too late to compare with the reference run"

    port = free_port()
    resume_args = [*args, f"train.max_steps={REFERENCE_STEPS}", "--resume"]
    _complete(_deepspeed(port, *resume_args, ranks=ranks), port, tmp_path / "resumed.log")
    resumed = read_scalars(out / "tensorboard")["train/loss"]
    expected = reference(max_tokens, ranks)
    for s in range(step + 1, REFERENCE_STEPS + 1):
        assert resumed[s] == expected[s], (s, resumed[s], expected[s])


def test_dataloader_worker_ignores_outside_stop_signals_but_not_its_parents(tmp_path: Path) -> None:
    """A worker survives SIGTERM/SIGINT from another process (the launcher, SLURM, Ctrl-C), and still ends on its
    parent's SIGTERM (how multiprocessing stops daemonic workers at exit)."""
    code = (
        "import os, signal, sys, time\n"
        "from ds_train.components.stopping import worker_init_fn\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    worker_init_fn(0)\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    os._exit(3)\n"
        "sys.stdin.readline()\n"  # the test signals the child from outside, then asks the parent to signal it
        "os.kill(pid, signal.SIGTERM)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), flush=True)\n"
    )
    env = dict(command_env(), PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        child = int(parent.stdout.readline())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            os.kill(child, sig)
        time.sleep(0.5)
        assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert int(parent.stdout.readline()) == -signal.SIGTERM
    finally:
        parent.kill()


def test_fit_shuts_its_dataloader_workers_down_before_returning(assets, tmp_path: Path) -> None:
    """Workers left to interpreter exit are SIGTERMed by multiprocessing while torch's SIGCHLD check is armed, and the
    rank prints "DataLoader worker ... is killed by signal" after its save; fit must end them itself."""
    trainer = Trainer(make_config(assets, tmp_path, "train.max_steps=2", "data.num_workers=2"))
    workers: set[int] = set()
    # children from before (e.g. the resource tracker an earlier test's spawn context started) are not this fit's
    before = {child.pid for child in psutil.Process().children()}

    def record_workers(index: int, batch: dict) -> dict:
        workers.update(child.pid for child in psutil.Process().children() if child.pid not in before)
        return batch

    inject(trainer, record_workers)
    trainer.fit()
    assert len(workers) >= 2
    alive = [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"DataLoader workers {alive} still running after fit() returned"
    assert trainer.batches.next_batch()["sample_ids"]  # closed, not broken: a later batch starts new workers
    trainer.batches.close()


def _scalar_steps(logdir: Path) -> dict[str, list[int]]:
    """tag -> the step of every scalar event TensorBoard shows, repeats included (read_scalars keeps one per step)."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [event.step for event in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resume_purges_the_tensorboard_events_past_the_checkpoint(assets, tmp_path: Path) -> None:
    """A run logs steps 1-5 but dies with only its step-3 checkpoint; `--resume` redoes steps 4-5 in the same
    output dir, and TensorBoard shows each step once, with the resumed run's values."""
    overrides = ("train.max_steps=5", "train.save_every=3")
    first = train(make_config(assets, tmp_path, *overrides))
    (first.checkpoint_dir / "latest").write_text("global_step3")  # as if killed after logging step 5, before saving
    resumed = train(make_config(assets, tmp_path, *overrides), resume=True)
    assert sorted(resumed.losses) == [4, 5]
    assert len(list(first.tensorboard_dir.glob("events.out.tfevents.*"))) == 2  # one file per run

    steps = _scalar_steps(first.tensorboard_dir)
    for tag in ("train/loss", "train/lr", "perf/step_time_s"):
        assert steps[tag] == [1, 2, 3, 4, 5], (tag, steps[tag])
    losses = read_scalars(first.tensorboard_dir)["train/loss"]
    assert [losses[s] for s in (1, 2, 3)] == pytest.approx([first.losses[s] for s in (1, 2, 3)], rel=1e-6)
    assert [losses[s] for s in (4, 5)] == pytest.approx([resumed.losses[s] for s in (4, 5)], rel=1e-6)
