"""Per-epoch references (`data.reference=same_speaker`): how many distinct references each utterance is cloned from
over 10 epochs, and the padding efficiency of token-budget micro-batches (real tokens of the examples as built / padded
tokens) with the prepared pairing and with per-epoch references, on one prepared corpus.

    python -m benchmarks.references [--max-tokens 3000] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics

from benchmarks._corpus import bench_corpus
from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_choice import ReferencePolicy
from data_pipeline.loading.samplers import TokenBudgetBatchSampler
from data_pipeline.prepare.build_set import PrepareConfig, prepare
from data_pipeline.types import AudioGeometry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    manifest, codec_file, scratch = bench_corpus()
    root = scratch.parent / "references_prepared"
    if not (root / "utterances.parquet").is_file():  # (re)made in the utterance format
        shutil.rmtree(root, ignore_errors=True)
        prepare(PrepareConfig(str(manifest), "dac", str(codec_file), str(root), 64), show_progress=False)
    meta = json.loads((root / "dataset.json").read_text())
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(meta["num_codebooks"], meta["codebook_size"]),
                           LayoutOptions(whisper=True))  # fmt: skip
    print(f"{len(PreparedDataset(root, layout))} examples, token budget {args.max_tokens}, {args.epochs} epochs")
    for mode in ("fixed", "same_speaker"):
        dataset = PreparedDataset(root, layout, ReferencePolicy(mode, 1.0, 30.0, seed=0))
        sampler = TokenBudgetBatchSampler(dataset.lengths, args.max_tokens, seed=0,
                                          epoch_lengths=dataset.epoch_lengths if dataset.needs_epoch else None)
        seen: dict[int, set] = {i: set() for i in range(len(dataset))}
        real = padded = 0
        for epoch in range(args.epochs):
            for batch in sampler.epoch_batches(epoch):
                tokens = []
                for i in batch:
                    example = dataset[(i, epoch)]
                    tokens.append(example.num_tokens)
                    seen[i].add(dataset.reference_uid(i, epoch))
                real += sum(tokens)
                padded += max(tokens) * len(batch)
        distinct = [len(s) for s in seen.values()]
        print(f"{mode:13s} distinct references per utterance: mean {statistics.mean(distinct):.1f}, min "
              f"{min(distinct)}, max {max(distinct)}; padding efficiency {real / padded:.1%} "
              f"(as planned: {sampler.padding_efficiency(0):.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
