"""Data loading for batches shaped like the `3b` preset's: the real prepared-dataset reader, token-budget sampler,
collator (Whisper features included) and DataLoader settings of `ds_train`, feeding a consumer that stands in for a GPU
step by sleeping for it. Reports the share of step time spent waiting for data, and the collator's throughput, with
the Whisper log-mel features computed in the loader and deferred to the training device (`whisper.features_on`).

    python -m benchmarks.loader_3b [--max-tokens 16384] [--step-ms auto] [--steps 40] [--workers 1,2]
                                   [--reference fixed,same_speaker]

The prepared dataset (under runs/bench_3b_data, utterance format) has the published codec geometry (8 x 1024 codes at
25 frames/s) and a realistic duration mix: 30 speakers x 20 utterances of 1-20 s, each example a target paired with
the next utterance of its speaker as reference; references offered only when 3-15 s long. Codes and PCM are random
(the cost of reading, tokenizing and collating does not depend on their values). With `same_speaker` each example
draws its reference per epoch, reading two utterances from the shards as with the prepared pairing. The default step
time is what the `3b` LLM needs for one micro-batch at 45 % MFU on an H100 (989 dense bf16 TFLOP/s), the issue's
target: a faster GPU step is a harder test.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks._corpus import REPO
from benchmarks.padding import WORDS
from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.loading.collator import VoiceCloningCollator
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_choice import ReferencePolicy
from data_pipeline.loading.samplers import TokenBudgetBatchSampler
from data_pipeline.prepare.build_set import storage_summary, write_set_indexes
from data_pipeline.prepare.shards import DATASET_FILE
from data_pipeline.prepare.utterance_store import EncodedUtterance, utterance_shard_name, write_utterance_shard
from data_pipeline.types import AudioGeometry

GEOMETRY = AudioGeometry(8, 1024)
H100_BF16_FLOPS, TARGET_MFU = 989e12, 0.45
LLM_3B_FLOPS_PER_TOKEN = 6 * 2.82e9  # 6 x the 3b preset's non-embedding LLM weights a token passes (`ds_train info`)


def make_prepared(root: Path, speakers: int = 30, per_speaker: int = 20, per_shard: int = 200) -> Path:
    """A prepared set (utterance format) of speakers x per_speaker synthetic utterances and as many examples."""
    if (root / "summary.json").is_file() and json.loads((root / DATASET_FILE).read_text()).get("format") == 2:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng, words = np.random.default_rng(0), random.Random(0)
    utterances, stored, examples = [], [], []
    for uid in range(speakers * per_speaker):
        seconds = float(rng.uniform(1, 20))
        pcm = torch.from_numpy(0.1 * rng.standard_normal(int(seconds * 16000))).float()
        stored.append(EncodedUtterance(uid, torch.from_numpy(rng.integers(0, 1024, (8, int(seconds * 25)))), seconds,
                                       pcm.numel(), pcm))  # fmt: skip
        utterances.append({"uid": uid, "path": f"u{uid}.wav", "speaker": f"s{uid // per_speaker}", "frames":
                           int(seconds * 25), "seconds": seconds, "samples16k": pcm.numel(), "has_pcm": True,
                           "shard": uid // per_shard, "row": uid % per_shard,
                           "text": " ".join(words.choices(WORDS, k=max(1, int(seconds * 2.7))))})  # fmt: skip
    for k in range(0, len(stored), per_shard):
        write_utterance_shard(root / utterance_shard_name(k // per_shard), stored[k : k + per_shard], "flac")
    for target in utterances:  # reference: the speaker's next utterance, among those lasting 3-15 s
        own = [u for u in utterances if u["speaker"] == target["speaker"] and 3 <= u["seconds"] <= 15]
        ref = next((u for u in own if u["uid"] > target["uid"]), own[0])
        examples.append({"id": f"e{target['uid']}", "line": target["uid"] + 1, "speaker": target["speaker"],
                         "scene": None, "ref_text": ref["text"], "text": target["text"], "ref_uid": ref["uid"],
                         "target_uid": target["uid"], "ref_frames": ref["frames"], "target_frames": target["frames"],
                         "ref_samples16k": ref["samples16k"], "ref_seconds": ref["seconds"],
                         "target_seconds": target["seconds"]})  # fmt: skip
    write_set_indexes(root, examples, utterances, [])
    meta = {"format": 2, "num_codebooks": 8, "codebook_size": 1024, "codec": "synthetic", "codec_path": "",
            "reference_pcm": "flac"}  # fmt: skip
    (root / DATASET_FILE).write_text(json.dumps(meta))
    (root / "summary.json").write_text(json.dumps(storage_summary(root, examples, -(-len(stored) // per_shard))))
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
    parser.add_argument("--reference", default="fixed", help="data.reference modes to measure, comma-separated")
    args = parser.parse_args()
    tokenizer = build_tiny_tokenizer()
    layout = LayoutBuilder(tokenizer, GEOMETRY, LayoutOptions(whisper=True))
    root = make_prepared(REPO / "runs" / "bench_3b_data")
    for mode in args.reference.split(","):
        print(f"--- data.reference={mode}")
        dataset = PreparedDataset(root, layout, ReferencePolicy(mode, 3.0, 15.0, seed=0))
        measure(dataset, tokenizer, args)


def measure(dataset: PreparedDataset, tokenizer, args: argparse.Namespace) -> None:
    """Collator throughput and data wait of one dataset (one reference mode)."""
    per_epoch = dataset.needs_epoch
    pad = SpecialTokenIds.from_tokenizer(tokenizer).pad
    collators = {where: VoiceCloningCollator(pad, GEOMETRY, whisper=True, whisper_on_device=where == "device")
                 for where in ("loader", "device")}  # fmt: skip

    def new_sampler() -> TokenBudgetBatchSampler:
        sampler = TokenBudgetBatchSampler(dataset.lengths, args.max_tokens, seed=0,
                                          epoch_lengths=dataset.epoch_lengths if per_epoch else None)  # fmt: skip
        sampler.with_epoch = per_epoch
        return sampler

    sampler = new_sampler()
    lengths = dataset.epoch_lengths(0)
    real_tokens = statistics.mean(sum(lengths[i] for i in b) for b in sampler.epoch_batches(0))
    step_s = args.step_ms / 1000 if args.step_ms else LLM_3B_FLOPS_PER_TOKEN * real_tokens / (
        H100_BF16_FLOPS * TARGET_MFU)  # fmt: skip

    print(f"{len(dataset)} rows, token budget {args.max_tokens}: {real_tokens:,.0f} real tokens per micro-batch, "
          f"padding efficiency {sampler.padding_efficiency(0):.1%}; emulated GPU step "
          f"{step_s * 1000:.0f} ms")  # fmt: skip
    threads = torch.get_num_threads()
    batches = [b for _, b in zip(range(8), sampler, strict=False)]
    for where, collator in collators.items():
        torch.set_num_threads(1)
        start = time.perf_counter()
        samples = sum(len(collator([dataset[i] for i in b])["sample_ids"]) for b in batches)  # (i, epoch) keys
        per_s = samples / (time.perf_counter() - start)
        torch.set_num_threads(threads)
        print(f"Whisper features in the {where}: read + tokenize + collate on 1 core {per_s:.1f} samples/s")
        for workers in (int(w) for w in args.workers.split(",")):
            sampler = new_sampler()
            frac, size = wait_fraction(dataset, collator, sampler, workers, step_s, args.steps)
            print(f"  num_workers={workers}: data wait {frac * 100:.2f} % of step time, {size:.1f} samples/batch")


if __name__ == "__main__":
    main()
