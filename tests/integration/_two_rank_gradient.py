"""The step gradient of chosen examples through the real Trainer and DeepSpeed engine (issue 12 §1).

Imported by tests/integration/test_objective.py, and run by it as a script under the real launcher
(`deepspeed --num_gpus 2 --no_local_rank tests/integration/_two_rank_gradient.py OUT_FILE OVERRIDE...`, CPU):
rank r takes RANK_EXAMPLES[r] as its one micro-batch, and rank 0 saves the step's reduced full gradient to OUT_FILE.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from ds_train.components.batch_stream import BatchStream
from ds_train.config import RunConfig, load_run_config
from ds_train.model.loss import LabelCounts, LossWeights
from ds_train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"
EXAMPLES = list(range(8))
# Each rank's examples on 2 ranks: the halves carry different label counts (checked by the test).
RANK_EXAMPLES = (EXAMPLES[:4], EXAMPLES[4:])


def gradient_config(prepared: Path, codec_file: Path, out: Path, accumulation: int) -> RunConfig:
    """The demo config on a prepared corpus, fp32 ZeRO-2, `accumulation` micro-batches per step, no side outputs."""
    return load_run_config(CONFIGS / "demo.yaml", [
        f"data.prepared={prepared}", f"data.codec_path={codec_file}", f"train.output_dir={out}",
        f"train.deepspeed_config={CONFIGS / 'zero2_fp32.json'}", "data.num_workers=0", "data.micro_batch_size=2",
        f"train.gradient_accumulation_steps={accumulation}", "monitor.decode_every=0", "train.tensorboard=false",
    ])  # fmt: skip


def step_gradient(trainer: Trainer, groups: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    """Forward/backward of one step whose micro-batches on this rank are the dataset rows `groups`, weighted over
    every rank as the trainer does. -> (the reduced full gradient, flattened [P]; codebook-0 labels per micro-batch)."""
    data = trainer.data
    batches = [data.collator([data.dataset[i] for i in group]) for group in groups]
    trainer.batches = BatchStream(trainer.batches.sampler, lambda _: iter(batches), 1.0)
    micro_batches = trainer.batches.next_batches(len(groups))
    counts = LabelCounts.of_step(micro_batches, False, trainer.device)
    trainer.forward_backward(micro_batches, LossWeights.for_step(counts, len(groups), trainer.world_size))
    params = [p for p in trainer.engine.module.parameters() if p.requires_grad]
    grads = [safe_get_full_grad(p).detach().flatten().clone() for p in params]  # collective under ZeRO-2/3
    labels = [int(LabelCounts.of_batch(b, False).audio[0]) for b in micro_batches]
    return torch.cat(grads), labels


def main(out_file: str, prepared: str, codec_file: str, out_dir: str) -> None:
    trainer = Trainer(gradient_config(Path(prepared), Path(codec_file), Path(out_dir), 1))
    assert trainer.world_size == len(RANK_EXAMPLES), trainer.world_size
    grad, labels = step_gradient(trainer, [RANK_EXAMPLES[trainer.rank]])
    if trainer.rank == 0:
        torch.save({"grad": grad, "labels": labels}, out_file)
    print(f"[rank{trainer.rank}] labels {labels}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
