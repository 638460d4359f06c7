"""Data loading for batches shaped like the `3b` preset's: the real prepared-dataset reader, token-budget sampler,
collator (Whisper features included) and DataLoader settings of `ds_train`, feeding a consumer that stands in for a GPU
step by sleeping for it. Reports the share of step time spent waiting for data, and the collator's throughput, with
the Whisper log-mel features computed in the loader and deferred to the training device (`whisper.features_on`).

    python -m benchmarks.loader_3b [--max-tokens 16384] [--step-ms auto] [--steps 40] [--workers 1,2]

The prepared dataset (under runs/bench_3b_data) has the published codec geometry (8 x 1024 codes at 25 frames/s) and
a realistic duration mix: references 3-15 s, targets 1-20 s; codes and reference PCM are random (the cost of reading,
tokenizing and collating does not depend on their values). The default step time is what the `3b` LLM needs for one
micro-batch at 45 % MFU on an H100 (989 dense bf16 TFLOP/s), the issue's target: a faster GPU step is a harder test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks._corpus import REPO
from benchmarks.padding import WORDS
from data_pipeline.collator import VoiceCloningCollator
from data_pipeline.layout import LayoutBuilder, LayoutOptions
from data_pipeline.prepare import merge
from data_pipeline.prepared_dataset import PreparedDataset
from data_pipeline.samplers import TokenBudgetBatchSampler
from data_pipeline.shards import DATASET_FILE, EncodedRow, shard_name, write_shard
from data_pipeline.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.types import AudioGeometry

GEOMETRY = AudioGeometry(8, 1024)
H100_BF16_FLOPS, TARGET_MFU = 989e12, 0.45
LLM_3B_FLOPS_PER_TOKEN = 6 * 2.82e9  # 6 x the 3b preset's non-embedding LLM weights a token passes (`ds_train info`)


def make_prepared(root: Path, rows: int = 600, rows_per_shard: int = 200) -> Path:
    """A prepared dataset of `rows` synthetic rows (written once)."""
    if (root / "summary.json").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng, words = np.random.default_rng(0), random.Random(0)
    shards = 0
    for start in range(0, rows, rows_per_shard):
        encoded = []
        for i in range(start, min(rows, start + rows_per_shard)):
            ref_s, tgt_s = rng.uniform(3, 15), rng.uniform(1, 20)
            codes = lambda s: torch.from_numpy(rng.integers(0, 1024, (8, int(s * 25))))  # noqa: E731
            encoded.append(EncodedRow(
                id=f"u{i}", line=i + 1, ref_text=" ".join(words.choices(WORDS, k=max(1, int(ref_s * 2.7)))),
                text=" ".join(words.choices(WORDS, k=max(1, int(tgt_s * 2.7)))), ref_codes=codes(ref_s),
                target_codes=codes(tgt_s), ref_pcm16k=torch.from_numpy(0.1 * rng.standard_normal(int(ref_s * 16000))),
                ref_seconds=ref_s, target_seconds=tgt_s,
            ))  # fmt: skip
        (root / f"shard-{shards:05d}.rejects.jsonl").write_text("")
        write_shard(root / shard_name(shards), encoded)
        shards += 1
    meta = {"num_codebooks": 8, "codebook_size": 1024, "codec": "synthetic", "codec_path": ""}
    (root / DATASET_FILE).write_text(json.dumps(meta))
    merge(root, shards, [], rows)
    return root


def wait_fraction(dataset, collator, sampler, workers: int, step_s: float, steps: int) -> tuple[float, float]:
    """-> (time waiting for data / wall time, mean samples per micro-batch) over `steps` steps after 3 warm-up ones."""
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)  # fmt: skip
    batches = iter(loader)
    waited, sizes, start = 0.0, [], 0.0
    for step in range(steps + 3):
        if step == 3:
            waited, sizes, start = 0.0, [], time.perf_counter()
        t0 = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t0
        sizes.append(batch["input_ids"].shape[0])
        time.sleep(step_s)  # the GPU step
    return waited / (time.perf_counter() - start), statistics.mean(sizes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=16384, help="token budget per micro-batch")
    parser.add_argument("--step-ms", type=float, default=None, help="GPU step time to emulate (default: see above)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    tokenizer = build_tiny_tokenizer()
    layout = LayoutBuilder(tokenizer, GEOMETRY, LayoutOptions(whisper=True))
    dataset = PreparedDataset(make_prepared(REPO / "runs" / "bench_3b_data"), layout)
    pad = SpecialTokenIds.from_tokenizer(tokenizer).pad
    collators = {where: VoiceCloningCollator(pad, GEOMETRY, whisper=True, whisper_on_device=where == "device")
                 for where in ("loader", "device")}  # fmt: skip
    sampler = TokenBudgetBatchSampler(dataset.lengths, args.max_tokens, seed=0)
    real_tokens = statistics.mean(sum(dataset.lengths[i] for i in b) for b in sampler.epoch_batches(0))
    step_s = args.step_ms / 1000 if args.step_ms else LLM_3B_FLOPS_PER_TOKEN * real_tokens / (
        H100_BF16_FLOPS * TARGET_MFU)  # fmt: skip

    print(f"{len(dataset)} rows, token budget {args.max_tokens}: {real_tokens:,.0f} real tokens per micro-batch; "
          f"emulated GPU step {step_s * 1000:.0f} ms")  # fmt: skip
    threads = torch.get_num_threads()
    batches = [b for _, b in zip(range(8), sampler, strict=False)]
    for where, collator in collators.items():
        torch.set_num_threads(1)
        start = time.perf_counter()
        samples = sum(len(collator([dataset[i] for i in b])["sample_ids"]) for b in batches)
        per_s = samples / (time.perf_counter() - start)
        torch.set_num_threads(threads)
        print(f"Whisper features in the {where}: read + tokenize + collate on 1 core {per_s:.1f} samples/s")
        for workers in (int(w) for w in args.workers.split(",")):
            sampler = TokenBudgetBatchSampler(dataset.lengths, args.max_tokens, seed=0)
            frac, size = wait_fraction(dataset, collator, sampler, workers, step_s, args.steps)
            print(f"  num_workers={workers}: data wait {frac * 100:.2f} % of step time, {size:.1f} samples/batch")


if __name__ == "__main__":
    main()
