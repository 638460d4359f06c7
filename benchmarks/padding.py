"""Padding efficiency: real tokens / padded tokens of micro-batches from the token-budget sampler vs fixed-size random
batches, on a realistic duration mix (reference 3-15 s, target 1-20 s, 25 codec frames/s, ~15 characters/s of text).

    python -m benchmarks.padding [--samples 20000] [--max-tokens 16384]
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.samplers import TokenBudgetBatchSampler
from data_pipeline.types import AudioGeometry

WORDS = "the quick brown fox jumps over a lazy dog while seven calm voices read clear sentences aloud".split()


def lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(8, 1024), LayoutOptions(whisper=True))
    out = []
    for ref_s, tgt_s in zip(rng.uniform(3, 15, n), rng.uniform(1, 20, n), strict=True):
        ref_text = " ".join(words.choices(WORDS, k=max(1, int(ref_s * 2.7))))
        text = " ".join(words.choices(WORDS, k=max(1, int(tgt_s * 2.7))))
        out.append(layout.token_count(ref_text, text, int(ref_s * 25), int(tgt_s * 25), int(ref_s * 16000)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--max-tokens", type=int, default=16384)
    args = parser.parse_args()
    lens = lengths(args.samples)
    sampler = TokenBudgetBatchSampler(lens, args.max_tokens, seed=0)
    batches = sampler.epoch_batches(0)
    mean_batch = np.mean([len(b) for b in batches])
    # Baseline: random fixed-size batches with the same mean number of samples per batch.
    size = max(1, round(mean_batch))
    order = np.random.default_rng(1).permutation(len(lens))
    real = padded = 0
    for start in range(0, len(order) - size + 1, size):
        chunk = [lens[i] for i in order[start : start + size]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    print(f"samples {len(lens)}, tokens per sample: mean {np.mean(lens):.0f}, min {min(lens)}, max {max(lens)}")
    print(f"token budget {args.max_tokens}: {len(batches)} micro-batches, {mean_batch:.2f} samples each on average")
    print(f"padding efficiency (real / padded tokens): token-budget sampler {sampler.padding_efficiency():.4f}, "
          f"fixed-size random batches of {size}: {real / padded:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
