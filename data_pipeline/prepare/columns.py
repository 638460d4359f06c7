"""A Parquet table held as columns that forked DataLoader workers share: numbers as numpy arrays, text in Arrow memory.

A table read into Python lists (`to_pydict`) is one Python object per value. Every read of one changes its reference
count, so each worker that reads an example copies the memory pages around it (copy-on-write): at millions of
examples, gigabytes per worker. numpy and Arrow buffers are plain memory that reading never writes, so the pages stay
shared by the parent and all its workers (benchmarks/index_memory.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class TextColumn:
    """A string column in Arrow memory: `column[i]` is a Python str (or None), built on each read (~1 us)."""

    def __init__(self, array: pa.ChunkedArray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> str | None:
        return self.array[int(i)].as_py()

    def take(self, indices: np.ndarray) -> list[str | None]:
        """The values at `indices` (int64 [K]) as Python objects, gathered in Arrow: for one-time passes."""
        return self.array.take(indices).to_pylist()

    def tolist(self) -> list[str | None]:
        """Every value as Python objects: for one-time passes (start-up token counts), not to keep."""
        return self.array.to_pylist()

    def __iter__(self):
        return iter(self.tolist())


Columns = dict[str, "np.ndarray | TextColumn"]


def read_columns(path: str | Path) -> Columns:
    """A Parquet file's columns: numeric and boolean ones as writable numpy arrays (they have no nulls in the tables
    read this way), string ones as `TextColumn`s."""
    table = pq.read_table(path)
    columns: Columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            columns[name] = TextColumn(column)
        else:
            columns[name] = np.array(column.to_numpy())  # a copy: writable, and independent of the Arrow table
    return columns
