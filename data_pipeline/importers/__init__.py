"""Convert other data layouts into our JSONL voice-cloning manifest (see `data_pipeline.manifest`): one module per
source (`chatml`, `pairs`, `split`), what they share in `common`, the command line in `cli`
(`python -m data_pipeline.importers chatml|pairs|split ...`)."""

from data_pipeline.errors import InputError
from data_pipeline.importers.chatml import convert_chatml, import_chatml
from data_pipeline.importers.cli import main
from data_pipeline.importers.common import ImportResult, write_result
from data_pipeline.importers.pairs import import_pairs, pair_corpus
from data_pipeline.importers.split import SplitResult, split_by_speaker

__all__ = [
    "ImportResult",
    "InputError",
    "SplitResult",
    "convert_chatml",
    "import_chatml",
    "import_pairs",
    "main",
    "pair_corpus",
    "split_by_speaker",
    "write_result",
]
