"""Token counts saved with a prepared set: a later start loads them instead of counting every example again, and
anything that changes a count (the index, the tokenizer, the layout options) gives other counts, never stale ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_choice import ReferencePolicy
from data_pipeline.prepare.build_set import write_set_indexes
from data_pipeline.prepare.count_cache import CHECKED
from data_pipeline.prepare.shards import DATASET_FILE
from data_pipeline.types import AudioGeometry
from tests.helpers import index_only_set

EXAMPLES = 300


def _layout(vocab_size: int = 512, whisper: bool = False) -> tuple[LayoutBuilder, list[int]]:
    """A layout whose `token_counts` records how many examples each call counts (it still counts them itself)."""
    layout = LayoutBuilder(build_tiny_tokenizer(vocab_size), AudioGeometry(4, 256), LayoutOptions(whisper=whisper))
    counted: list[int] = []
    real = layout.token_counts

    def recording(*columns, **kwargs):
        counted.append(len(columns[0]))
        return real(*columns, **kwargs)

    layout.token_counts = recording
    return layout, counted


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    return index_only_set(tmp_path / "set", EXAMPLES)


def _fresh_counts(root: Path, layout: LayoutBuilder) -> list[int]:
    x = PreparedDataset(root, layout).index
    return [layout.token_count(x["ref_text"][i], x["text"][i], int(x["ref_frames"][i]), int(x["target_frames"][i]),
                               int(x["ref_samples16k"][i]), x["scene"][i]) for i in range(EXAMPLES)]  # fmt: skip


def test_a_second_start_loads_the_counts_and_checks_a_sample(prepared: Path) -> None:
    layout, counted = _layout()
    first = PreparedDataset(prepared, layout).lengths
    assert counted == [EXAMPLES] and len(list(prepared.glob("counts-examples-*.npy"))) == 1
    counted.clear()
    again = PreparedDataset(prepared, layout).lengths
    assert again == first and counted == [CHECKED]  # a sample counted afresh, not the set
    assert first == _fresh_counts(prepared, layout)


def test_same_speaker_parts_are_saved_too(prepared: Path) -> None:
    layout, counted = _layout()
    policy = ReferencePolicy("same_speaker", 1.0, 30.0, seed=0)
    first = PreparedDataset(prepared, layout, policy)
    assert counted == [EXAMPLES] * 3  # with the prepared reference, without one, each utterance as a reference
    counted.clear()
    again = PreparedDataset(prepared, layout, policy)
    assert counted == [CHECKED] * 3 and again.lengths == first.lengths
    assert again.epoch_lengths(2) == first.epoch_lengths(2)


def test_wrong_saved_counts_are_found_and_replaced(prepared: Path, caplog) -> None:
    layout, counted = _layout()
    right = PreparedDataset(prepared, layout).lengths
    (saved,) = prepared.glob("counts-examples-*.npy")
    np.save(saved, np.asarray(right, dtype=np.int64) + 1)  # every count off by one, under the right name
    counted.clear()
    with caplog.at_level(logging.WARNING):
        assert PreparedDataset(prepared, layout).lengths == right
    assert counted == [CHECKED, EXAMPLES] and "disagree with a fresh count" in caplog.text
    assert np.load(saved).tolist() == right  # replaced
    np.save(saved, np.zeros(7, dtype=np.int64))  # the wrong size: not even checked
    counted.clear()
    assert PreparedDataset(prepared, layout).lengths == right and counted == [EXAMPLES]


def test_what_changes_a_count_changes_the_saved_file(prepared: Path, tmp_path: Path) -> None:
    layout, _ = _layout()
    PreparedDataset(prepared, layout)
    other_tokenizer, counted = _layout(vocab_size=384)
    lengths = PreparedDataset(prepared, other_tokenizer).lengths
    assert counted == [EXAMPLES] and lengths == _fresh_counts(prepared, other_tokenizer)
    meta = json.loads((prepared / DATASET_FILE).read_text())
    (prepared / DATASET_FILE).write_text(json.dumps({**meta, "reference_pcm": "flac"}))  # lets a Whisper run open it
    whisper, counted = _layout(whisper=True)
    PreparedDataset(prepared, whisper)
    assert counted == [EXAMPLES] and len(list(prepared.glob("counts-examples-*.npy"))) == 3
    # a new index (the set prepared again, with other texts) is counted afresh, not given the old counts
    index = PreparedDataset(prepared, layout).index
    examples = [{name: (column[i] if not isinstance(column, np.ndarray) else column[i].item())
                 for name, column in index.items()} for i in range(EXAMPLES)]  # fmt: skip
    utterances = PreparedDataset(prepared, layout).utterances
    rows = [{name: (column[i] if not isinstance(column, np.ndarray) else column[i].item())
             for name, column in utterances.items()} for i in range(len(utterances["uid"]))]  # fmt: skip
    for example in examples:
        example["text"] += " and a few more words"
    write_set_indexes(prepared, examples, rows, [])
    layout, counted = _layout()
    lengths = PreparedDataset(prepared, layout).lengths
    assert counted == [EXAMPLES] and lengths == _fresh_counts(prepared, layout)


def test_counts_that_cannot_be_saved_only_mean_counting_each_time(prepared: Path, caplog) -> None:
    layout, counted = _layout()
    first = PreparedDataset(prepared, layout).lengths
    (saved,) = prepared.glob("counts-examples-*.npy")
    saved.unlink()
    saved.mkdir()  # the file's place is taken (as a read-only folder would refuse it, even to root)
    with caplog.at_level(logging.INFO):
        second = PreparedDataset(prepared, layout).lengths
        third = PreparedDataset(prepared, layout).lengths
    assert first == second == third and counted == [EXAMPLES] * 3
    assert "counted again at the next start" in caplog.text and not list(prepared.glob("*.partial"))
