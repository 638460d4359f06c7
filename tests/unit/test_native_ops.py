"""A build lock left by a killed process must not hang the next run (ds_train/components/native_ops.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ds_train.components.native_ops import extensions_root
from tests.helpers import REPO, command_env

# One rank set up the way every entry point does it: DeepSpeed's CPU backend loads its shared-memory all-reduce op.
SET_UP_ONE_RANK = "from ds_train.components.distributed import init_distributed; print('rank', init_distributed()[0])"


def test_a_lock_left_by_a_killed_build_is_removed_instead_of_waited_on(tmp_path: Path) -> None:
    """torch's lock file for the op, as a process SIGKILLed while loading it leaves it: without the guard, the next
    process waits on it forever (here: until the timeout)."""
    extensions = tmp_path / "torch_extensions"
    built = extensions_root() / "deepspeed_shm_comm"
    if built.is_dir():  # reuse this machine's build (the suite's earlier runs made it); else the child builds it once
        shutil.copytree(built, extensions / "deepspeed_shm_comm", ignore=shutil.ignore_patterns("lock"))
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    env = dict(command_env(), TORCH_EXTENSIONS_DIR=str(extensions))
    proc = subprocess.run([sys.executable, "-c", SET_UP_ONE_RANK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=400)  # fmt: skip
    assert proc.returncode == 0 and "rank 0" in proc.stdout, proc.stderr[-3000:]
    assert f"removing {lock}, left by a process killed while it loaded the 'deepspeed_shm_comm' op" in proc.stderr
    assert not lock.exists() and list(lock.parent.glob("*.so"))
