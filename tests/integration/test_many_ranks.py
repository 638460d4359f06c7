"""Many ranks: each rank's own state across a resume, halts that stop every rank together, per-rank seeds (issue 22).

Runs go through the real `deepspeed` launcher with 2 CPU ranks and tests/integration/_rank_local_run.py, which puts a
fault on rank 1 only.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.helpers import REPO, command_env, free_port

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
SCRIPT = Path(__file__).with_name("_rank_local_run.py")


def _launch(fault: str, prepared: Path, codec: Path, out: Path, ids: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank", str(SCRIPT), fault,
           str(prepared), str(codec), str(out), str(ids), *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=dict(command_env(), PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _records(ids: Path) -> list[dict]:
    return [json.loads(Path(f"{ids}.rank{r}.json").read_text()) for r in range(2)]


def test_each_rank_resumes_its_own_data_position_and_counters(assets, prepared_corpus, tmp_path: Path) -> None:
    """Rank 1 skips its first micro-batch (every row bad), so its data position runs one ahead of rank 0's. A run
    saved at step 2 and resumed must train the same samples on each rank at steps 3-4 as an uninterrupted run, and
    keep each rank's row counters (the checkpoint used to carry rank 0's position and counters for every rank)."""
    whole = tmp_path / "whole_ids"
    _ok(_launch("skip_first", prepared_corpus, assets.codec_file, tmp_path / "whole", whole, "train.max_steps=4"))
    part = tmp_path / "part_ids"
    _ok(_launch("skip_first", prepared_corpus, assets.codec_file, tmp_path / "part", part, "train.max_steps=2",
                "train.save_every=2"))  # fmt: skip
    resumed = tmp_path / "resumed_ids"
    _ok(_launch("none", prepared_corpus, assets.codec_file, tmp_path / "part", resumed, "train.max_steps=4",
                "--resume"))  # fmt: skip
    uninterrupted, after_resume = _records(whole), _records(resumed)
    for rank in range(2):
        for step in ("3", "4"):
            assert after_resume[rank]["trained"][step] == uninterrupted[rank]["trained"][step], (rank, step)
        assert (after_resume[rank]["rows_seen"], after_resume[rank]["bad"]) == (
            uninterrupted[rank]["rows_seen"], uninterrupted[rank]["bad"]
        ), rank  # fmt: skip
    assert uninterrupted[1]["bad"] == 2 and uninterrupted[0]["bad"] == 0
    # each rank draws from its own generator (dropout, worker seeds): seeded by (train.seed, rank)
    assert uninterrupted[0]["rng"] != uninterrupted[1]["rng"]

    # A shard that verifies (its size, a whole zip) but does not load, on rank 1 only: rank 1's own line reaches the
    # console (only rank 0 prints other errors), naming the rank and the checkpoint.
    shard = tmp_path / "part" / "checkpoints" / "global_step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    _scramble_pickle(shard)
    proc = _launch("none", prepared_corpus, assets.codec_file, tmp_path / "part", tmp_path / "broken_ids",
                   "train.max_steps=5", "--resume")  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: rank 1: --resume: ")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-4000:]
    assert f"{shard.parent} does not load: " in lines[0], lines


def _scramble_pickle(path: Path) -> None:
    """Overwrite the middle of a torch file's pickle in place: same size, still a whole zip, no longer loadable."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    with path.open("r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_len + extra_len + info.compress_size // 2)
        handle.write(b"\xff" * min(64, info.compress_size // 4))


def _stopped_together(proc: subprocess.CompletedProcess, code: int, words: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert proc.returncode == code, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert errors and all(words in line and "[rank 1 on " in line for line in errors), proc.stderr[-4000:]
    assert len(set(line.split("error: ", 1)[1] for line in errors)) == 1, errors  # one message
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


def test_too_many_bad_rows_on_one_rank_stops_every_rank_with_one_message(assets, prepared_corpus, tmp_path) -> None:
    proc = _launch("bad_rows", prepared_corpus, assets.codec_file, tmp_path / "run", tmp_path / "ids",
                   "train.max_steps=3")  # fmt: skip
    _stopped_together(proc, 5, "rows failed to load")


def test_a_health_halt_on_one_rank_stops_every_rank_with_one_message(assets, prepared_corpus, tmp_path) -> None:
    proc = _launch("unusable", prepared_corpus, assets.codec_file, tmp_path / "run", tmp_path / "ids",
                   "train.max_steps=3")  # fmt: skip
    _stopped_together(proc, 8, "micro-batches had no usable sample")


def test_a_rank_that_hangs_ends_the_run_in_bounded_time_naming_it(assets, prepared_corpus, tmp_path) -> None:
    """Rank 1 is stopped from outside (SIGSTOP: alive, silent, as a hung process or a host cut off the network).
    Without the peer watch rank 0 would wait in its next collective for the process group's 30-minute timeout."""
    ids = tmp_path / "ids"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank", str(SCRIPT), "pid",
           str(prepared_corpus), str(assets.codec_file), str(tmp_path / "run"), str(ids), "train.max_steps=100000",
           "train.save_every=100000", "train.peer_timeout_minutes=0.1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(command_env(), PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    pid_file, deadline = Path(f"{ids}.pid"), time.monotonic() + 300
    while not pid_file.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pid_file.is_file(), proc.communicate()[1][-3000:]
    hung = int(pid_file.read_text())
    os.kill(hung, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        for sig in (signal.SIGKILL,):
            try:
                os.kill(hung, sig)
            except ProcessLookupError:
                pass
        proc.kill()
    took = time.monotonic() - stopped_at
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 9 or any("exits with return code = 9" in x for x in (out + err).splitlines()), err[-3000:]
    assert lines and "lost rank 1 on " in lines[0] and "train.peer_timeout_minutes" in lines[0], err[-3000:]
    assert took < 6 + 30 + 30, took  # the watch (6 s), then the launcher's 30 s grace to the stopped rank
