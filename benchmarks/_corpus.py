"""The demo corpus and tiny codec the CPU benchmarks train on (made under runs/bench_corpus on first use)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.codecs import tiny_dac
from data_pipeline.demo.corpus import make_demo_corpus

REPO = Path(__file__).resolve().parent.parent


def bench_corpus() -> tuple[Path, Path, Path]:
    """-> (manifest, tiny DAC weights file, scratch output dir)."""
    root = REPO / "runs" / "bench_corpus"
    manifest = make_demo_corpus(root / "corpus")
    codec_file = root / "tiny_dac.pth"
    if not codec_file.is_file():
        tiny_dac(0).save(str(codec_file))
    return manifest, codec_file, root / "run"
