"""Convert other data layouts into our JSONL voice-cloning manifest (see `data_pipeline.ingest.manifest`): one module
per source (`chatml`, `pairs`, `split`, `hf`, `wds`), what they share in `common` (and, for the corpus importers that
extract audio, `extract`), the command line in `cli` (`python -m data_pipeline.importers
chatml|pairs|split|hf|webdataset ...`)."""

from data_pipeline.errors import InputError
from data_pipeline.importers.chatml import convert_chatml, import_chatml
from data_pipeline.importers.cli import main
from data_pipeline.importers.common import ImportResult, write_result
from data_pipeline.importers.extract import ExtractResult
from data_pipeline.importers.hf import import_hf
from data_pipeline.importers.pairs import Utterance, import_pairs, pair_corpus, pair_utterances
from data_pipeline.importers.split import SplitResult, split_by_speaker
from data_pipeline.importers.wds import import_webdataset

__all__ = [
    "ExtractResult",
    "ImportResult",
    "InputError",
    "SplitResult",
    "Utterance",
    "convert_chatml",
    "import_chatml",
    "import_hf",
    "import_pairs",
    "import_webdataset",
    "main",
    "pair_corpus",
    "pair_utterances",
    "split_by_speaker",
    "write_result",
]
