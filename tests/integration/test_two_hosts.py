"""A real two-host launch on one machine (tests/integration/two_hosts.py): launch/train_multi_node.sh on host A with a
hostfile naming both hosts' addresses, DeepSpeed's runner reaching both over pdsh/ssh, one rank per host talking gloo
over the veth, and the environment the ranks need passed on by ds_train.runner. Needs root, iproute2, openssh-server
and pdsh (`.ci/run` installs them); skipped otherwise."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CONFIGS, read_scalars
from tests.integration.two_hosts import MASTER_PORT, SUBNET, TwoHosts, skip_reason, two_hosts

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
RUN_TIMEOUT_S = 300  # a hang (e.g. gloo on the wrong interface) fails here instead of blocking the suite


def _args(assets, prepared: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a short fp32 ZeRO-2 run of the tiny preset (launch/train_multi_node.sh adds `train --config`)."""
    return [
        f"data.prepared={prepared}", f"data.codec_path={assets.codec_file}", f"train.output_dir={out}",
        f"train.deepspeed_config={CONFIGS / 'zero2_fp32.json'}", "data.micro_batch_size=4", "data.num_workers=0",
        "train.log_every=1", "train.min_lr=3e-3", *extra,
    ]  # fmt: skip


def _run(hosts: TwoHosts, tmp_path: Path, name: str, *args: str) -> tuple[int, str]:
    launch = hosts.train(CONFIGS / "demo.yaml", *args, log=tmp_path / f"{name}.log")
    return launch.wait(timeout=RUN_TIMEOUT_S)


def _by_host(text: str, pattern: str) -> dict[str, list[str]]:
    """Lines matching `pattern` in the launch's output, by the host pdsh names at their start."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(rf"({re.escape(SUBNET)}\.\d+): (.*)", line)
        if match and re.search(pattern, match.group(2)):
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_node_local_output_dir_is_refused_on_every_host(assets, prepared_corpus, tmp_path: Path) -> None:
    """train.output_dir on each node's own disk: every rank stops at start-up with one config error line per node
    naming the host that does not see rank 0's files, exit 3, nothing hangs, nothing is left in the directory."""
    node_local = tmp_path / "node_local"
    node_local.mkdir()
    with two_hosts(tmp_path / "hosts", node_local) as hosts:
        code, text = _run(hosts, tmp_path, "refused", *_args(assets, prepared_corpus, node_local / "run"),
                          "train.max_steps=2")  # fmt: skip
        disks = [host.node_local_dir for host in hosts.hosts]
    assert code == 3, text[-5000:]
    assert "Traceback" not in text, text[-5000:]
    errors = _by_host(text, r"^error: ")
    assert sorted(errors) == [f"{SUBNET}.1", f"{SUBNET}.2"], text[-5000:]  # both ranks stopped, each node said so
    expected = (f"error: train.output_dir={node_local / 'run'} is not shared between nodes (host-b does not see the "
                "files rank 0 writes there on host-a): ")  # fmt: skip
    for lines in errors.values():
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert "NFS" in lines[0]
    # each rank made the folder and proved it writable (train.output_dir check), then stopped: two empty folders
    assert sorted(p.name for disk in disks for p in disk.rglob("*")) == ["run", "run"]
    assert not list(node_local.iterdir())  # the real path under the bind mounts was never written


def _train_two_steps(hosts: TwoHosts, assets, prepared: Path, out: Path, tmp_path: Path) -> None:
    """2 steps on 2 hosts: rank 0 logs on host A, host B's launcher runs rank 1, each rank saves its ZeRO-2 shard."""
    code, text = _run(hosts, tmp_path, "train", *_args(assets, prepared, out, "train.max_steps=2"))
    assert code == 0, text[-5000:]
    assert "on 2 rank(s)" in text
    assert len(_by_host(text, r"\[rank0\] step +\d+/2 \| .* \| loss ").get(f"{SUBNET}.1", [])) == 2, text[-5000:]
    assert _by_host(text, r"nnodes=2, num_local_procs=1, node_rank=1").get(f"{SUBNET}.2"), text[-5000:]
    shards = sorted(p.name for p in (out / "checkpoints" / "global_step2").glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_train_on_two_hosts(assets, prepared_corpus, tmp_path: Path) -> None:
    """Shared storage (both hosts see the machine's files): the tiny preset trains 2 steps, one rank per host."""
    with two_hosts(tmp_path / "hosts") as hosts:
        _train_two_steps(hosts, assets, prepared_corpus, tmp_path / "shared" / "run", tmp_path)


@pytest.mark.slow_multihost
def test_train_on_two_hosts_then_resume(assets, prepared_corpus, tmp_path: Path) -> None:
    """Shared storage: 2 steps on 2 hosts, then `--resume` continues from the checkpoint of step 2."""
    out = tmp_path / "shared" / "run"
    with two_hosts(tmp_path / "hosts") as hosts:
        _train_two_steps(hosts, assets, prepared_corpus, out, tmp_path)
        code, resumed = _run(hosts, tmp_path, "resume",
                             *_args(assets, prepared_corpus, out, "train.max_steps=3"), "--resume")  # fmt: skip
    assert code == 0, resumed[-5000:]
    assert "resumed from" in resumed and "step 2 -> 3" in resumed, resumed[-5000:]
    assert sorted(read_scalars(out / "tensorboard")["train/loss"]) == [1, 2, 3]


def _wait_for(launch, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = launch.text()
        if re.search(pattern, text):
            return text
        assert launch.process.poll() is None, text[-5000:]
        time.sleep(1)
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{launch.text()[-5000:]}")


@pytest.mark.slow_multihost
def test_killing_one_host_stops_the_other_naming_it_and_resume_continues_exactly(
    assets, prepared_corpus, tmp_path: Path
) -> None:
    """Every process of host B is SIGKILLed mid-training (the machine died): host A's rank stops within the peer
    timeout with one line naming the lost rank and host, instead of waiting in a collective for 30 minutes; then
    `--resume` on both hosts continues from the step-2 checkpoint with the losses the lost run logged at step 3."""
    out = tmp_path / "shared" / "run"
    with two_hosts(tmp_path / "hosts") as hosts:
        args = _args(assets, prepared_corpus, out, "train.max_steps=100000", "train.save_every=2",
                     "train.peer_timeout_minutes=0.25")  # fmt: skip
        launch = hosts.train(CONFIGS / "demo.yaml", *args, log=tmp_path / "lost.log")
        _wait_for(launch, r"\[rank0\] step +3/", RUN_TIMEOUT_S)
        killed_at = time.monotonic()
        assert hosts.kill_run(hosts.b)
        code, text = launch.wait(timeout=150)
        took = time.monotonic() - killed_at
        lines = _by_host(text, r"^error: lost rank 1 on host-b").get(f"{SUBNET}.1", [])
        assert code != 0 and len(lines) == 1, text[-5000:]
        assert took < 15 + 60, took  # the watch's 15 s, with room for a loaded machine
        lost = read_scalars(out / "tensorboard")["train/loss"]  # host A closed its event file on the way out
        saved = int((out / "checkpoints" / "latest").read_text().removeprefix("global_step"))
        assert saved >= 2 and max(lost) > saved, (saved, lost)
        end = saved + 2
        args = _args(assets, prepared_corpus, out, f"train.max_steps={end}", "train.save_every=2")
        code, resumed_text = _run(hosts, tmp_path, "resume", *args, "--resume")
    assert code == 0, resumed_text[-5000:]
    resumed = read_scalars(out / "tensorboard")["train/loss"]
    assert sorted(resumed) == list(range(1, end + 1)), resumed
    redone = [step for step in lost if saved < step <= end]  # the lost run's steps past its checkpoint, done again
    assert redone and all(resumed[step] == lost[step] for step in redone), (redone, resumed, lost)


@pytest.mark.slow_multihost
def test_a_halt_on_the_second_host_stops_both_with_one_message(assets, prepared_corpus, tmp_path: Path) -> None:
    """Every sample of rank 1 (host B) fails a batch check: the monitor's halt, decided by both ranks together."""
    script = Path(__file__).with_name("_rank_local_run.py")
    out = tmp_path / "shared" / "run"
    with two_hosts(tmp_path / "hosts") as hosts:
        cmd = [sys.executable, "-m", "ds_train.runner", "--hostfile", str(hosts.hostfile()), "--master_addr",
               hosts.a.address, "--master_port", str(MASTER_PORT), "--no_local_rank", str(script), "unusable",
               str(prepared_corpus), str(assets.codec_file), str(out), str(tmp_path / "ids"), "train.max_steps=3"]
        code, text = hosts.launch(cmd, tmp_path / "halt.log").wait(timeout=RUN_TIMEOUT_S)  # fmt: skip
    errors = _by_host(text, r"^error: ")
    assert code != 0 and sorted(errors) == [f"{SUBNET}.1", f"{SUBNET}.2"], text[-5000:]
    messages = {line for lines in errors.values() for line in lines}
    assert len(messages) == 1 and "no usable sample" in next(iter(messages)) and "[rank 1 on host-b]" in next(
        iter(messages)
    ), messages  # fmt: skip
