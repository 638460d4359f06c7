"""Two Linux "hosts" on one machine, for real multi-node launches (pdsh + ssh + gloo over a network link).

Each host is a network namespace with its own address on a veth pair (`IFNAME` on both ends, `SUBNET`.1 and .2), its
own hostname (UTS namespace) and its own mount namespace, held by the host's `sshd` (root login by a per-test key
only, listening on the host's address). In each mount namespace root's home and /run are overlays of the real ones
on a private tmpfs (root's `.ssh` there holds the test's key, ssh config and known_hosts; nothing is written to the
real /root or /run), and `node_local`, when given, is bind-mounted over by a per-host directory: the same path then
holds different files on each host, like a node's local disk. Everything started over ssh is a child of the host's
sshd, so it sees that host's network, hostname and files; the launcher runs on host A (`nsenter` into its sshd's
namespaces), reaches both hosts over ssh as on a cluster, and the ranks talk over the veth.

Needs root, `ip` (iproute2), `sshd` (openssh-server), `ssh`/`ssh-keygen` and `pdsh`: `skip_reason()` says what is
missing. `two_hosts(workdir)` tears everything down on exit, on failure too: every process in the namespaces is
SIGKILLed (their mounts go with them) and the namespaces are deleted.

Helpers for tests of lost peers: `TwoHosts.launch(...)` starts a run in the background and returns a `Launch`
handle; `TwoHosts.kill_run(host)` SIGKILLs every process of the run on one host (the host "dies"; its sshd stays).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ds_train.components.native_ops import extensions_root
from tests.helpers import REPO, command_env

SUBNET = "10.231.0"  # a private /24 that exists only inside the test's own namespaces
IFNAME = "ds0"  # the veth's name on both hosts: GLOO_SOCKET_IFNAME is one value for every rank
MASTER_PORT = 29500  # free: nothing else listens inside a fresh namespace
SSHD = "/usr/sbin/sshd"  # sshd refuses to start from a relative path (it re-executes itself)
READY_TIMEOUT_S = 20.0
_names = itertools.count()

# Run by each host's first process, inside its fresh network, UTS and mount namespaces; ends as its sshd.
# $1 hostname, $2 scratch dir (becomes a tmpfs), $3 dir with root's .ssh files, $4 sshd_config,
# $5 node-local source dir and $6 the path it is mounted on (both empty for none).
_HOST_SETUP = r"""
set -eu
hostname "$1"
mount -n -t tmpfs -o mode=0700 tmpfs "$2"
for dir in /root /run; do
  layer="$2/$(echo "$dir" | tr / _)"
  mkdir -p "$layer/upper" "$layer/work"
  mount -n -t overlay overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
done
mkdir -p -m 0700 /root/.ssh
cp "$3"/* /root/.ssh/
chmod 0600 /root/.ssh/*
mkdir -p /run/sshd
if [ -n "$5" ]; then mount -n --bind "$5" "$6"; fi
exec "$0" -D -e -f "$4"
"""


def skip_reason() -> str | None:
    """Why two-host tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "two-host tests need root (network and mount namespaces)"
    missing = [tool for tool in ("ip", "ssh", "ssh-keygen", "pdsh", "nsenter", "unshare") if not shutil.which(tool)]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        return f"two-host tests need {', '.join(missing)} (Debian: iproute2 openssh-server pdsh util-linux)"
    return None


@dataclass
class Host:
    name: str  # its hostname, and its alias in the ssh config
    address: str
    netns: str
    dir: Path  # its sshd config, host key and log
    node_local_dir: Path | None = None  # what `node_local` shows on this host
    sshd: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        """Every process in the host's network namespace (its sshd and all that runs under it)."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def nsenter(self, *cmd: str) -> list[str]:
        """`cmd` run inside this host (its network, hostname and files), from the repository root."""
        assert self.sshd is not None, f"{self.name} is not started"
        return ["nsenter", f"--target={self.sshd.pid}", "--net", "--mount", "--uts", f"--wd={REPO}", "--", *cmd]

    def run_pids(self) -> list[int]:
        """The processes of a run on this host: all but its sshd daemon (ssh sessions, DeepSpeed's launcher, ranks)."""
        return [pid for pid in self.pids() if self.sshd is None or pid != self.sshd.pid]


@dataclass
class Launch:
    """A launch started in the background on host A; its stdout and stderr (merged) go to `log`."""

    process: subprocess.Popen
    log: Path
    cmd: list[str]

    def wait(self, timeout: float) -> tuple[int, str]:
        """-> (exit code, log text); raises subprocess.TimeoutExpired (the run keeps going) if it does not end."""
        code = self.process.wait(timeout=timeout)
        return code, self.log.read_text()

    def text(self) -> str:
        return self.log.read_text()


@dataclass
class TwoHosts:
    a: Host  # rank 0's host, where the launcher runs
    b: Host
    workdir: Path
    node_local: Path | None  # the path that is a different directory on each host (None: no node-local path)
    launches: list[Launch] = field(default_factory=list)

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def hostfile(self, slots: int = 1) -> Path:
        """A DeepSpeed hostfile naming the two addresses, host A first (rank 0's)."""
        path = self.workdir / f"hostfile_{slots}"
        path.write_text("".join(f"{host.address} slots={slots}\n" for host in self.hosts))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """The launcher's environment: the tests' own, plus what the ranks need on every host. DeepSpeed's runner
        passes on PYTHON*, and ds_train.runner the rest (PATH, HF_*, GLOO_*, ...: ds_train/runner.py)."""
        venv_bin = str(Path(sys.executable).parent)
        return dict(
            command_env(),
            PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=str(REPO),
            VENV=str(Path(venv_bin).parent),  # the launch scripts use the venv running the tests
            MASTER_ADDR=self.a.address,
            MASTER_PORT=str(MASTER_PORT),
            GLOO_SOCKET_IFNAME=IFNAME,
            # The machine's build cache for DeepSpeed's JIT ops, as a shared home on a cluster: under the hosts'
            # overlaid /root every run would rebuild them (2 min of CPU per host) and throw the build away.
            TORCH_EXTENSIONS_DIR=str(extensions_root()),
            **extra,
        )

    def launch(self, cmd: list[str], log: Path, **env: str) -> Launch:
        """Start `cmd` on host A in the background (e.g. launch/train_multi_node.sh with `self.hostfile()`)."""
        with log.open("w") as sink:
            process = subprocess.Popen(self.a.nsenter(*cmd), cwd=REPO, env=self.env(**env), stdout=sink,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        launch = Launch(process, log, cmd)
        self.launches.append(launch)
        return launch

    def train(self, run_config: Path, *args: str, log: Path, slots: int = 1, **env: str) -> Launch:
        """launch/train_multi_node.sh on both hosts, started on host A in the background."""
        script = REPO / "launch" / "train_multi_node.sh"
        return self.launch(["bash", str(script), str(self.hostfile(slots)), str(run_config), *args], log, **env)

    def kill_run(self, host: Host) -> list[str]:
        """SIGKILL every process of a run on `host` (its ssh sessions, DeepSpeed's launcher, the ranks and their
        workers), as if the machine had died; -> what was killed, as "pid command" strings."""
        killed = []
        for pid in host.run_pids():
            with contextlib.suppress(ProcessLookupError):
                killed.append(f"{pid} {_cmdline(pid)}")
                os.kill(pid, signal.SIGKILL)
        return killed

    def rank_pids(self, host: Host) -> list[int]:
        """The training ranks running on `host`: `python -u -m ds_train --local_rank=N train ...`, started by
        DeepSpeed's per-node launcher (not the launcher, nor `python -m ds_train.runner` on host A)."""
        return [pid for pid in host.run_pids() if " -m ds_train " in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _keygen(path: Path) -> str:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path.with_suffix(".pub").read_text().strip()


def _write_ssh_files(workdir: Path, hosts: tuple[Host, Host]) -> Path:
    """Root's .ssh for both hosts: a client key, authorized on both; the hosts' keys in known_hosts; aliases."""
    ssh = workdir / "dot_ssh"
    ssh.mkdir()
    client = _keygen(ssh / "id_ed25519")
    (ssh / "authorized_keys").write_text(client + "\n")
    known, config = [], []
    for host in hosts:
        host.dir.mkdir()
        key = _keygen(host.dir / "ssh_host_ed25519_key").rsplit(" ", 1)[0]  # drop the comment
        known.append(f"{host.name},{host.address} {key}\n")
        config.append(f"Host {host.name} {host.address}\n  HostName {host.address}\n")
        (host.dir / "sshd_config").write_text(
            f"ListenAddress {host.address}\nHostKey {host.dir / 'ssh_host_ed25519_key'}\nPidFile none\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nUseDNS no\nPrintMotd no\n"
            "PrintLastLog no\nX11Forwarding no\nMaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n"
        )  # fmt: skip
    (ssh / "known_hosts").write_text("".join(known))
    config.append("Host *\n  User root\n  IdentityFile ~/.ssh/id_ed25519\n  IdentitiesOnly yes\n  BatchMode yes\n"
                  "  StrictHostKeyChecking yes\n  ConnectTimeout 10\n")  # fmt: skip
    (ssh / "config").write_text("".join(config))
    return ssh


def _start_host(host: Host, ssh_dir: Path, node_local: Path | None) -> None:
    scratch = host.dir / "scratch"
    scratch.mkdir()
    bind = [str(host.node_local_dir), str(node_local)] if host.node_local_dir and node_local else ["", ""]
    log = (host.dir / "sshd.log").open("w")
    host.sshd = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
         "sh", "-c", _HOST_SETUP, SSHD, host.name, str(scratch), str(ssh_dir), str(host.dir / "sshd_config"), *bind],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()


def _wait_until_reachable(hosts: TwoHosts) -> None:
    """Until `ssh <host> hostname` from host A answers with each host's name."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for host in hosts.hosts:
        while True:
            proc = subprocess.run(hosts.a.nsenter("ssh", host.name, "hostname"), capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout.strip() == host.name:
                break
            for each in hosts.hosts:
                if each.sshd is not None and each.sshd.poll() is not None:
                    raise RuntimeError(f"sshd of {each.name} exited: {(each.dir / 'sshd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssh {host.name} from {hosts.a.name} failed: {proc.stderr.strip()[-2000:]}")
            time.sleep(0.2)


def _teardown(hosts: TwoHosts) -> None:
    for launch in hosts.launches:  # the launcher runs in host A's namespaces: SIGKILLed below with the rest
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.process.pid, signal.SIGKILL)
    for host in hosts.hosts:
        for pid in host.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for launch in hosts.launches:
        with contextlib.suppress(subprocess.TimeoutExpired):
            launch.process.wait(timeout=10)
    for host in hosts.hosts:
        if host.sshd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.sshd.wait(timeout=10)  # its mount namespace (overlays, tmpfs, bind mount) ends with it
    for host in hosts.hosts:
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)  # the veth pair goes with them


@contextlib.contextmanager
def two_hosts(workdir: Path, node_local: Path | None = None) -> Iterator[TwoHosts]:
    """Host A (`SUBNET`.1, "host-a") and host B (`SUBNET`.2, "host-b"), reachable from each other over ssh.

    With `node_local` (an existing empty directory), that path shows `<workdir>/disk-a` on host A and
    `<workdir>/disk-b` on host B; without it both hosts see the machine's files everywhere (shared storage)."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    tag = f"{os.getpid()}-{next(_names)}"
    hosts = TwoHosts(
        Host("host-a", f"{SUBNET}.1", f"dst-{tag}-a", workdir / "host-a"),
        Host("host-b", f"{SUBNET}.2", f"dst-{tag}-b", workdir / "host-b"),
        workdir,
        node_local,
    )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        ssh_dir = _write_ssh_files(workdir, hosts.hosts)
        for host in hosts.hosts:
            _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", IFNAME, "netns", hosts.a.netns, "type", "veth", "peer", "name", IFNAME,
             "netns", hosts.b.netns)  # fmt: skip
        for host in hosts.hosts:
            _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", IFNAME)
            _run("ip", "-n", host.netns, "link", "set", IFNAME, "up")
            _run("ip", "-n", host.netns, "link", "set", "lo", "up")
            if node_local is not None:
                host.node_local_dir = workdir / f"disk-{host.name[-1]}"
                host.node_local_dir.mkdir()
            _start_host(host, ssh_dir, node_local)
        _wait_until_reachable(hosts)
        yield hosts
    finally:
        _teardown(hosts)
