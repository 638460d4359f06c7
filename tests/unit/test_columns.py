"""A prepared set's indexes stay shared by forked DataLoader workers: reading examples copies no memory page.

Measured from outside the reader, as the kernel sees it: the private dirty memory a forked child gains while it reads
every example's index fields (what a DataLoader worker does). With the index as Python lists (what `to_pydict` gave)
each read writes a reference count, so the child copies the pages around it; the control shows the measure sees that.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipeline.columns import TextColumn, read_columns
from data_pipeline.layout import LayoutBuilder, LayoutOptions
from data_pipeline.prepare import write_set_indexes
from data_pipeline.prepared_dataset import PreparedDataset
from data_pipeline.shards import DATASET_FILE, INDEX_FILE
from data_pipeline.text_tokens import build_tiny_tokenizer
from data_pipeline.types import AudioGeometry
from data_pipeline.utterance_store import UTTERANCES_FILE

EXAMPLES = 20_000
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]


def _index_only_set(root: Path, n: int) -> Path:
    """A prepared set's indexes for n examples of n utterances (no shards: only the indexes are read here)."""
    root.mkdir(parents=True)
    rng = random.Random(0)
    utterances = [
        {"uid": 3 * u + 7, "path": f"/corpus/u{u}.wav", "text": " ".join(rng.choices(WORDS, k=12)),
         "speaker": f"s{u // 10}",
         "language": "en", "shard": u // 1000, "row": u % 1000, "frames": 100, "seconds": 4.0, "samples16k": 64000,
         "has_pcm": False}
        for u in range(n)
    ]  # fmt: skip
    examples = [
        {"id": f"row-{i:08d}", "line": i + 1, "speaker": f"s{i // 10}", "language": "en", "scene": None,
         "ref_text": utterances[(i + 1) % n]["text"], "text": utterances[i]["text"],
         "ref_uid": utterances[(i + 1) % n]["uid"], "target_uid": utterances[i]["uid"], "ref_frames": 100,
         "target_frames": 100, "ref_samples16k": 64000, "ref_seconds": 4.0, "target_seconds": 4.0}
        for i in range(n)
    ]  # fmt: skip
    write_set_indexes(root, examples, utterances, [])
    meta = {"format": 2, "num_codebooks": 4, "codebook_size": 256, "codec": "dac", "codec_path": "",
            "reference_pcm": "none"}  # fmt: skip
    (root / DATASET_FILE).write_text(json.dumps(meta))
    return root


def _private_dirty_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _read_every_example(dataset: PreparedDataset, results) -> None:
    before = _private_dirty_kb()
    for i in range(len(dataset)):  # the index reads of building example i (its shards are not there to read)
        dataset.row_sizes(i)
        dataset._position(dataset.reference_uid(i, 0))
    results.put((_private_dirty_kb() - before) / 1024)


def _growth_of_a_forked_reader(dataset: PreparedDataset) -> float:
    """MB of private memory a forked child gains while reading every example's index fields."""
    context = multiprocessing.get_context("fork")  # how DataLoader workers start on Linux
    results = context.Queue()
    child = context.Process(target=_read_every_example, args=(dataset, results))
    child.start()
    grown = results.get(timeout=120)
    child.join()
    return grown


@pytest.fixture(scope="module")
def large_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _index_only_set(tmp_path_factory.mktemp("index") / "set", EXAMPLES)


def _dataset(root: Path) -> PreparedDataset:
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(4, 256), LayoutOptions(whisper=False))
    return PreparedDataset(root, layout)


def test_forked_workers_share_the_index_instead_of_copying_it(large_index: Path) -> None:
    dataset = _dataset(large_index)
    shared = _growth_of_a_forked_reader(dataset)
    # control: the same reads with the example index as Python lists, as the reader kept it before
    dataset.index = pq.read_table(large_index / INDEX_FILE).to_pydict()
    copied = _growth_of_a_forked_reader(dataset)
    assert copied > 3.0, copied  # ~8 MB for 20,000 examples: the measure sees copy-on-write
    assert shared < 1.5 and shared < copied / 4, (shared, copied)


def test_columns_give_the_same_values_as_the_table(large_index: Path) -> None:
    table = pq.read_table(large_index / UTTERANCES_FILE).to_pydict()
    columns = read_columns(large_index / UTTERANCES_FILE)
    assert isinstance(columns["text"], TextColumn) and isinstance(columns["uid"], np.ndarray)
    for name, values in table.items():
        assert len(columns[name]) == len(values)
        assert list(columns[name].tolist()) == values, name
        assert columns[name][123] == values[123]
    columns["row"][5] = 10**6  # writable: tests inject unreadable rows this way
    dataset = _dataset(large_index)
    assert dataset.row_sizes(7).text == table["text"][7] and dataset.reference_uid(7, 0) == 3 * 8 + 7
    with pytest.raises(KeyError, match="utterance 8 is not in"):
        dataset._position(8)
