"""`python -m ds_train evaluate` throughput on CPU with the tiny preset, and the speed-up of batched generation over
one line at a time, measured in one run on the same checkpoint and list.

    python -m benchmarks.evaluate_throughput [--lines 16] [--batch-size 8] [--steps 100] [--max-seconds 4]

The checkpoint is the demo's run config trained `--steps` steps on the benchmark corpus (so the lengths it generates
are speech-like, not all at the cap). The list clones each corpus utterance from its manifest reference, with the real
recording as `gt_wav`. Both runs write the same audio (greedy); the figure is utterances per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks._corpus import REPO, bench_corpus
from ds_train.config import load_run_config
from ds_train.evaluation.eval_list import evaluate_list
from ds_train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=4.0)
    args = parser.parse_args()
    manifest, codec_file, scratch = bench_corpus()
    run = scratch.parent / f"evaluate_run_{args.steps}"
    if not (run / "checkpoints" / "latest").is_file():
        cfg = load_run_config(REPO / "ds_configs" / "demo.yaml", [
            f"data.manifest={manifest}", f"data.codec_path={codec_file}", f"train.output_dir={run}",
            f"train.max_steps={args.steps}", "train.tensorboard=false", "train.eval_every=0",
        ])  # fmt: skip
        Trainer(cfg).fit()
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][: args.lines]
    lists = scratch.parent / "evaluate_list"
    lists.mkdir(parents=True, exist_ok=True)
    base = manifest.parent
    lines = [
        f"{r['id']}|{r['ref_text']}|{os.path.relpath(base / r['ref_audio'], lists)}|{r['text']}|"
        f"{os.path.relpath(base / r['audio'], lists)}"
        for r in rows
    ]
    (lists / "meta.lst").write_text("\n".join(lines) + "\n")
    timings = {}
    for batch_size in (1, args.batch_size):
        out = scratch.parent / f"evaluate_out_b{batch_size}_{time.time_ns()}"
        started = time.perf_counter()
        summary = evaluate_list(run, lists / "meta.lst", out, max_seconds=args.max_seconds, batch_size=batch_size)
        timings[batch_size] = time.perf_counter() - started
        gen = summary["generated"]
        print(f"batch {batch_size}: {len(rows)} lines in {timings[batch_size]:.1f} s = "
              f"{len(rows) / timings[batch_size]:.2f} utt/s; generation RTF {gen['rtf']:.3f}, stop rate "
              f"{gen['stop_rate']:.2f}, duration ratio {gen['duration_ratio']:.2f}")  # fmt: skip
    print(f"batched ({args.batch_size}) over one at a time: {timings[1] / timings[args.batch_size]:.2f}x")


if __name__ == "__main__":
    main()
