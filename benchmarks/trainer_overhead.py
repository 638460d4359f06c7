"""Trainer overhead: median optimizer-step time of ds_train's `Trainer.train_step` (batch checks, monitor, metrics,
LR floor, periodic per-part norms) against a bare `engine(batch); engine.backward(loss); engine.step()` loop, on the
same DeepSpeed engine and the same pre-collated batches, interleaved step by step in one process.

    python -m benchmarks.trainer_overhead [--preset tiny|mid] [--steps 40] [--ds zero2_fp32.json]

Needs a corpus: it makes the demo corpus under runs/bench_corpus on first use.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks._corpus import REPO, bench_corpus  # noqa: E402
from benchmarks._progress import mark  # noqa: E402
from ds_train.components.batch_stream import BatchStream  # noqa: E402
from ds_train.config import load_run_config  # noqa: E402
from ds_train.model import presets  # noqa: E402
from ds_train.trainer import Trainer  # noqa: E402

# A mid-size LLM for CPU: big enough that the step is compute-bound, small enough to run here.
presets.LLM_PRESETS.setdefault("mid", dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                                            num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                            max_position_embeddings=4096))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ds", default="zero2_fp32.json")
    parser.add_argument("--micro-batch", type=int, default=8)
    args = parser.parse_args()
    mark("imports done")
    manifest, codec_file, out = bench_corpus()
    mark(f"corpus ready; building the trainer (preset {args.preset}, {args.ds})")
    cfg = load_run_config(REPO / "ds_configs" / "demo.yaml", [
        f"data.manifest={manifest}", f"data.codec_path={codec_file}", f"train.output_dir={out}",
        f"train.deepspeed_config={REPO / 'ds_configs' / args.ds}", f"model.preset={args.preset}",
        f"data.micro_batch_size={args.micro_batch}", "data.num_workers=0", "train.tensorboard=false",
        f"train.max_steps={10 * args.steps}", "monitor.decode_every=0",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    mark("trainer built (model, data, DeepSpeed engine)")
    data, sampler = trainer.data, trainer.batches.sampler
    batches = [data.collator([data.dataset[i] for i in idx]) for idx in itertools.islice(sampler, 8)]
    cycle = itertools.cycle(batches)
    # the trainer reads the same pre-collated batches as the bare loop (its batch checks included)
    trainer.batches = BatchStream(sampler, lambda _: cycle, cfg.data.max_bad_fraction, trainer.monitor.screen)
    engine = trainer.engine

    def bare_step() -> None:
        for _ in range(engine.gradient_accumulation_steps()):
            batch = trainer.prepare_batch(next(cycle))
            batch.pop("bad_samples", None)
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()

    ours, bare = [], []
    for step in range(args.steps + 3):
        took = []
        for fn, times in ((trainer.train_step, ours), (bare_step, bare)):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            took.append(time.perf_counter() - start)
            if step >= 3:  # warm-up
                times.append(took[-1])
        mark(f"step {step + 1} of {args.steps + 3} (3 warm-up): ds_train {took[0]:.2f} s, bare {took[1]:.2f} s")
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    params = sum(p.numel() for p in engine.module.parameters()) / 1e6
    print(f"preset {args.preset} ({params:.1f}M params), {args.ds}, micro-batch {args.micro_batch}, "
          f"device {trainer.device}, {args.steps} interleaved steps each")  # fmt: skip
    print(f"median step: ds_train {m_ours * 1000:.1f} ms, bare DeepSpeed loop {m_bare * 1000:.1f} ms, "
          f"ratio {m_ours / m_bare:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
