"""Token counts of a prepared set's examples, kept in the set's folder for the next start.

Counting the tokens of every example is a start's largest cost at corpus scale (43 s per million examples, on every
rank, at every start and resume: benchmarks/index_memory.py), and it gives the same numbers each time for the same
index and layout. So the counts are saved next to the index under a name that digests everything they depend on: the
index file's bytes, the tokenizer, the layout options and geometry, and the source of the layout code. A later start
loads them after counting a random sample of examples afresh (a corrupt file or a counting change the digest missed
shows there, and everything is counted again). A folder the run cannot write to only means counting at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from data_pipeline.layout import builder as layout_module
from data_pipeline.layout import text_tokens
from data_pipeline.layout.builder import LayoutBuilder

log = logging.getLogger(__name__)
CHECKED = 64  # examples counted afresh when counts are loaded
FILE_DIGEST_BLOCK = 1 << 22


def file_digest(path: Path) -> str:
    """A digest of a file's bytes (what saved counts of its rows depend on)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(FILE_DIGEST_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def layout_digest(layout: LayoutBuilder) -> str:
    """What a token count depends on besides the example: tokenizer, options, geometry and the layout's code."""
    tokenizer = layout.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.blake2b(digest_size=16)
    for part in (vocabulary, repr(layout.options), repr(layout.geometry)):
        digest.update(part.encode())
    for module in (layout_module, text_tokens):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def cached_counts(
    folder: Path, name: str, depends_on: Sequence[str], size: int, count: Callable[[np.ndarray], list[int]]
) -> np.ndarray:
    """[size] int64 token counts: `count(indices)` gives the counts of the examples `indices` (int64 [K]); loaded from
    `folder` when saved there under the same `depends_on` (digests: `layout_digest`, `file_digest` of the files the
    counts come from), else counted and saved (atomically: ranks that count at once write the same numbers)."""
    key = hashlib.blake2b(digest_size=12)
    for part in (name, *depends_on):
        key.update(part.encode())
    path = folder / f"counts-{name}-{key.hexdigest()}.npy"
    saved = _load(path, size)
    if saved is not None:
        sample = np.random.default_rng().choice(size, min(size, CHECKED), replace=False) if size else saved[:0]
        if np.array_equal(saved[sample], np.asarray(count(sample), dtype=np.int64)):
            return saved
        log.warning("%s: saved token counts disagree with a fresh count of %d examples; counting all again",
                    path, len(sample))  # fmt: skip
    counts = np.asarray(count(np.arange(size)), dtype=np.int64)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            np.save(f, counts)
        os.replace(partial, path)
    except OSError as err:
        log.info("token counts not saved in %s (%s): they are counted again at the next start", folder, err)
        partial.unlink(missing_ok=True)
    return counts


def _load(path: Path, size: int) -> np.ndarray | None:
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if counts.shape != (size,) or counts.dtype != np.int64:
        return None
    return counts
