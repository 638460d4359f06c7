"""A short training run with a fault on one rank only, through the real Trainer (issue 22 §1-2).

Run by tests/integration/test_many_ranks.py under the real launcher:

    deepspeed --num_gpus 2 --no_local_rank tests/integration/_rank_local_run.py FAULT PREPARED CODEC OUT IDS [KEY=V...]

FAULT, on rank 1 only: `none`; `skip_first` (every row of its first micro-batch fails to load, so its data position
runs ahead of rank 0's); `bad_rows` (every row fails to load: data.max_bad_fraction stops it); `unusable` (every
sample fails a batch check: the monitor's halt on micro-batches without a usable sample); `pid` (writes its process
id to IDS.pid at step 2, for the test to stop it from outside). A trailing `--resume` resumes. Each rank writes
IDS.rank<r>.json: the sample ids it trained at each step, and its row counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from data_pipeline.errors import run_cli
from data_pipeline.types import BadSample
from ds_train.config import load_run_config
from ds_train.errors import TRAINER_ERRORS
from ds_train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"


def _fault(kind: str):
    def change(index: int, batch: dict) -> dict:
        ids = list(batch.get("sample_ids", ()))
        if kind == "skip_first" and index == 0 or kind == "bad_rows":
            return {"empty": True, "sample_ids": [], "bad_samples": [BadSample(i, "injected on rank 1") for i in ids]}
        if kind == "unusable":
            batch["audio_input_ids"] = batch["audio_input_ids"].clone().fill_(10_000)  # outside every codebook
        return batch

    return change


def main(argv: list[str]) -> int:
    resume = "--resume" in argv
    fault, prepared, codec, out, ids_file, *overrides = [a for a in argv if a != "--resume"]
    cfg = load_run_config(CONFIGS / "demo.yaml", [
        f"data.prepared={prepared}", f"data.codec_path={codec}", f"train.output_dir={out}",
        f"train.deepspeed_config={CONFIGS / 'zero2_fp32.json'}", "data.num_workers=0", "data.micro_batch_size=2",
        "monitor.decode_every=0", "train.tensorboard=false", "train.eval_every=0", *overrides,
    ])  # fmt: skip
    trainer = Trainer(cfg, resume=resume)
    if trainer.rank == 1 and fault not in ("none", "pid"):
        trainer.batches.add_tap(_fault(fault))
    trained: dict[int, list[str]] = {}
    rng: list[str] = []
    forward_backward = trainer.forward_backward

    def recording(micro_batches, weights):
        if not trained:  # the generator state each rank trains with (dropout masks, DataLoader worker seeds)
            rng.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest())
        trained[trainer.step + 1] = [i for batch in micro_batches for i in batch["sample_ids"]]
        if fault == "pid" and trainer.rank == 1 and trainer.step + 1 == 2:
            Path(f"{ids_file}.pid").write_text(str(os.getpid()))
        return forward_backward(micro_batches, weights)

    trainer.forward_backward = recording
    trainer.fit()
    stream = trainer.batches
    record = {"trained": trained, "rng": rng, "rows_seen": stream.rows_seen, "bad": stream.bad_samples}
    Path(f"{ids_file}.rank{trainer.rank}.json").write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None, TRAINER_ERRORS))
