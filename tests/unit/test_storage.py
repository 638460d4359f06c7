"""The shared-output-dir check (ds_train/components/storage.py) with 2 real gloo ranks on this machine: ranks given
different directories stand for nodes with their own disks (tests/integration/test_two_hosts.py does it with real
hosts)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ds_train.components.storage import MARKER_PREFIX, check_shared_output_dir


def _free_port() -> int:  # not tests.helpers': the spawned ranks import this module, and that one is slow to import
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, cases: dict[str, list[str]], results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for case, dirs in cases.items():  # one process group for all cases: starting ranks is the slow part
            try:
                check_shared_output_dir(Path(dirs[rank]), rank, 2, torch.device("cpu"))
                results[case, rank] = "ok"
            except Exception as err:  # reported to the test, which checks its type by name
                results[case, rank] = f"{type(err).__name__}: {err}"
    finally:
        dist.destroy_process_group()


def test_every_rank_agrees_on_whether_output_dir_is_shared(tmp_path: Path) -> None:
    shared = tmp_path / "run"
    (tmp_path / "a_file").write_text("")
    cases = {
        "shared": [shared, shared],
        "node_local": [tmp_path / "disk_a" / "run", tmp_path / "disk_b" / "run"],  # one path on two nodes, in effect
        "unwritable": [tmp_path / "a_file" / "run"] * 2,  # rank 0 cannot create it: rank 1 must not wait forever
    }
    with mp.Manager() as manager:
        shared_results = manager.dict()
        cases_arg = {case: [str(d) for d in dirs] for case, dirs in cases.items()}
        mp.spawn(_rank, args=(_free_port(), cases_arg, shared_results), nprocs=2, join=True)
        results = dict(shared_results)
    host = socket.gethostname()

    assert results["shared", 0] == results["shared", 1] == "ok"
    assert not list(shared.glob(f"{MARKER_PREFIX}*"))  # the marker is removed

    local = cases["node_local"]
    for rank in (0, 1):
        assert results["node_local", rank].startswith(
            f"ConfigError: train.output_dir={local[rank]} is not shared between nodes ({host} does not see the "
            f"files rank 0 writes there on {host}): "
        ), results  # fmt: skip
    assert not list(local[0].glob(f"{MARKER_PREFIX}*"))

    for rank in (0, 1):
        assert results["unwritable", rank].startswith(
            f"ConfigError: train.output_dir={cases['unwritable'][0]} cannot be written on rank 0's host ({host})"
        ), results
