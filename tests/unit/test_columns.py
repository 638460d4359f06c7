"""A prepared set's indexes stay shared by forked DataLoader workers: reading examples copies no memory page.

Measured from outside the reader, as the kernel sees it: the private dirty memory a forked child gains while it reads
every example's index fields (what a DataLoader worker does). With the index as Python lists (what `to_pydict` gave)
each read writes a reference count, so the child copies the pages around it; the control shows the measure sees that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.prepare.columns import TextColumn, read_columns
from data_pipeline.prepare.shards import INDEX_FILE
from data_pipeline.prepare.utterance_store import UTTERANCES_FILE
from data_pipeline.types import AudioGeometry
from tests.helpers import growth_of_a_forked_reader, index_only_set

EXAMPLES = 20_000


@pytest.fixture(scope="module")
def large_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_only_set(tmp_path_factory.mktemp("index") / "set", EXAMPLES)


def _dataset(root: Path) -> PreparedDataset:
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(4, 256), LayoutOptions(whisper=False))
    return PreparedDataset(root, layout)


def test_forked_workers_share_the_index_instead_of_copying_it(large_index: Path) -> None:
    dataset = _dataset(large_index)
    shared = growth_of_a_forked_reader(dataset)
    # control: the same reads with the example index as Python lists, as the reader kept it before
    dataset.index = pq.read_table(large_index / INDEX_FILE).to_pydict()
    copied = growth_of_a_forked_reader(dataset)
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
