"""Memory of a prepared set's indexes, in the training process and in each DataLoader worker, at corpus scale.

    python -m benchmarks.index_memory [--examples 1000000]

Writes the indexes of an index-only prepared set (`tests.helpers.index_only_set`: n examples of n utterances, 12-word
texts) and opens it with `PreparedDataset`. Prints the time to open it (counting every example's tokens, then again
with the counts saved beside the index), the resident memory the open dataset adds to the process, and the private
memory a forked reader (a DataLoader worker on Linux) gains while it reads every example's index fields, for
the reader's columns (numpy + Arrow) and, as the before, the same index as Python lists (what `to_pydict` gave).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.prepare.shards import INDEX_FILE
from data_pipeline.prepare.utterance_store import UTTERANCES_FILE
from data_pipeline.types import AudioGeometry
from tests.helpers import growth_of_a_forked_reader, index_only_set


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--root", default="runs/index_memory")
    args = parser.parse_args()
    root = Path(args.root) / f"set{args.examples}"
    if not (root / INDEX_FILE).is_file():
        shutil.rmtree(root, ignore_errors=True)
        index_only_set(root, args.examples)
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(4, 256), LayoutOptions(whisper=False))
    for saved in root.glob("counts-*.npy"):  # the first open counts every example
        saved.unlink()
    gc.collect()
    before, started = resident_mb(), time.perf_counter()
    dataset = PreparedDataset(root, layout)
    opened, seconds = resident_mb() - before, time.perf_counter() - started
    started = time.perf_counter()
    PreparedDataset(root, layout)
    reopened = time.perf_counter() - started
    shared = growth_of_a_forked_reader(dataset)
    before = resident_mb()
    dataset.index = pq.read_table(root / INDEX_FILE).to_pydict()
    dataset.utterances_as_lists = pq.read_table(root / UTTERANCES_FILE).to_pydict()  # held, as the reader held it
    lists = resident_mb() - before
    copied = growth_of_a_forked_reader(dataset)
    print(f"{args.examples:,} examples: opening the set took {seconds:.1f} s (counting tokens) and {opened:.0f} MB "
          f"resident (columns + the sampler's lengths); the same two indexes as Python lists would add {lists:.0f} MB")
    print(f"opening it again, with the saved token counts: {reopened:.1f} s")
    print(f"a forked reader of every example gains {shared:.1f} MB (columns) vs {copied:.1f} MB (index as Python "
          "lists): per DataLoader worker")


if __name__ == "__main__":
    main()
