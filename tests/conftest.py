"""Shared fixtures: a small real corpus (eSpeak NG speech) and a tiny random-init DAC on disk."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from data_pipeline.codecs import DacCodec, tiny_dac  # noqa: E402
from data_pipeline.demo.corpus import make_demo_corpus  # noqa: E402
from data_pipeline.prepare.build_set import PrepareConfig, prepare  # noqa: E402
from ds_train.components.distributed import SHM_ALLREDUCE_PREFIX, SHM_DIR  # noqa: E402
from tests.helpers import Assets  # noqa: E402


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    root = tmp_path_factory.mktemp("assets")
    manifest = make_demo_corpus(root / "corpus", num_speakers=2)
    codec_file = root / "tiny_dac.pth"
    tiny_dac(seed=0).save(str(codec_file))
    return Assets(manifest, codec_file)


@pytest.fixture(scope="session")
def prepared_corpus(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test corpus through `prepare` once, so runs that need no start-up encoding skip it."""
    out = tmp_path_factory.mktemp("prepared_corpus")
    prepare(PrepareConfig(str(assets.manifest), "dac", str(assets.codec_file), str(out), 12), show_progress=False)
    return out


@pytest.fixture(scope="session")
def codec(assets: Assets) -> DacCodec:
    return DacCodec.from_file(assets.codec_file)


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_shared_memory():
    """No run in the suite may leave DeepSpeed's /dev/shm all-reduce buffers behind: /dev/shm is RAM, and leaked
    buffers piled up across runs until the machine ran out of memory."""
    before = set(SHM_DIR.glob(f"{SHM_ALLREDUCE_PREFIX}_*"))
    yield
    leaked = sorted(str(path) for path in set(SHM_DIR.glob(f"{SHM_ALLREDUCE_PREFIX}_*")) - before)
    assert not leaked, f"runs left {len(leaked)} shared-memory buffers behind: {leaked[:4]}"


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)


SLOW_MULTIHOST = "slow_multihost"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml: launch/_env.sh reinstalls the venv when pyproject.toml changes.
    config.addinivalue_line("markers", f"{SLOW_MULTIHOST}: longer two-host launches, run only with -m {SLOW_MULTIHOST}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the longer two-host tests unless the -m expression names them (README "Tests")."""
    if SLOW_MULTIHOST in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker(SLOW_MULTIHOST)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker(SLOW_MULTIHOST)]
