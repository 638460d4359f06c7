"""Data loading: the collator's throughput on one core, and the share of step time spent waiting for data with 0, 1
and 2 DataLoader workers (tiny preset, demo corpus, CPU).

    python -m benchmarks.data_loading [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks._corpus import REPO, bench_corpus  # noqa: E402
from ds_train.config import load_run_config  # noqa: E402
from ds_train.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    manifest, codec_file, out = bench_corpus()
    base = [f"data.manifest={manifest}", f"data.codec_path={codec_file}", f"train.output_dir={out}",
            f"train.deepspeed_config={REPO / 'ds_configs' / 'zero2_fp32.json'}", "train.tensorboard=false",
            "monitor.decode_every=0", "train.max_steps=1000"]  # fmt: skip

    trainer = Trainer(load_run_config(REPO / "ds_configs" / "demo.yaml", [*base, "data.num_workers=0"]))
    examples = [trainer.data.dataset[i] for i in range(len(trainer.data.dataset))]
    torch.set_num_threads(1)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 5:
        trainer.data.collator(examples[(count * 8) % 40 : (count * 8) % 40 + 8])
        count += 1
    per_s = count * 8 / (time.perf_counter() - start)
    torch.set_num_threads(2)
    refs = statistics.mean(ex.whisper_chunks[0].numel() / 16000 for ex in examples)
    print(f"collator on 1 core: {per_s:.0f} samples/s (micro-batches of 8, references {refs:.1f} s on average, "
          f"Whisper features included)")  # fmt: skip

    for workers in (0, 1, 2):
        cfg = load_run_config(REPO / "ds_configs" / "demo.yaml", [*base, f"data.num_workers={workers}"])
        trainer = Trainer(cfg)
        values = [trainer.train_step().values for _ in range(args.steps + 3)][3:]
        wait = statistics.mean(v["perf/data_wait_frac"] for v in values)
        step = statistics.median(v["perf/step_time_s"] for v in values)
        print(f"num_workers={workers}: data wait {wait * 100:.1f} % of step time, median step {step * 1000:.0f} ms")


if __name__ == "__main__":
    main()
