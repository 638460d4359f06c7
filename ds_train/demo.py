"""The built-in demo: a local multi-speaker corpus, a tiny random-init codec, and the `tiny` preset trained with
DeepSpeed ZeRO-2 bf16 (CPU, or GPU where one exists).

Every speaker says the same sentences, so a target's text does not tell its voice: only the reference does. The demo
ends by measuring the conditioning gain (ds_train/evaluation/conditioning.py) on its training voices and on the
held-out ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from data_pipeline.codecs import tiny_dac
from data_pipeline.demo.corpus import EVAL_MANIFEST, make_demo_corpus
from ds_train.components.distributed import init_distributed, native_bf16
from ds_train.config import load_run_config
from ds_train.evaluation.conditioning import GAIN, ConditioningGain, true_reference_loss
from ds_train.trainer import Trainer, TrainResult

log = logging.getLogger("ds_train")
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "ds_configs" / "demo.yaml"
EVAL_SPEAKERS = 2  # held-out voices: two, so that the eval set's references can be swapped between speakers


@dataclass
class DemoResult:
    train: TrainResult
    # eval/loss and cloning/* of the final model: on the training voices, on the held-out ones
    training_voices: dict[str, float] = field(default_factory=dict)
    held_out_voices: dict[str, float] = field(default_factory=dict)
    speaker_encoder: str | None = None  # what measured cloning/gen_speaker_sim (None: not measured)

    def summary(self) -> list[str]:
        """The demo's conditioning-gain lines (the gain is the eval loss with another speaker's reference minus the
        loss with the sample's own: > 0 means the model uses the reference voice), its speaker similarity and word
        error rate lines (or how to get them), and where to look in TensorBoard."""
        lines = []
        for name, values in (("training voices", self.training_voices), ("held-out voices", self.held_out_voices)):
            if GAIN not in values:
                lines.append(f"Conditioning gain, {name}: not measured")
                continue
            parts = [f"{k} {values[f'{GAIN}_{k}']:+.4f}" for k in ("codes", "whisper") if f"{GAIN}_{k}" in values]
            lines.append(
                f"Conditioning gain, {name}: {values[GAIN]:+.4f} nats (loss {true_reference_loss(values):.4f} with "
                f"the own reference, {values['cloning/loss_swapped_ref']:.4f} with another voice's"
                + (f"; swapped alone: {', '.join(parts)})" if parts else ")")
            )
        held_out = self.held_out_voices
        if "cloning/gen_speaker_sim" in held_out:
            lines.append(
                f"Speaker similarity, held-out voices: generated vs reference {held_out['cloning/gen_speaker_sim']:.3f}"
                f", real target vs reference {held_out['cloning/gen_speaker_sim_target']:.3f} (the ceiling); by "
                f"{self.speaker_encoder}"
            )
        else:
            lines.append("Speaker similarity: not measured (generation off, or no speaker encoder: install resemblyzer "
                         "from requirements.txt or set monitor.speaker_model)")  # fmt: skip
        if "cloning/gen_wer" in held_out:
            lines.append(f"Word error rate, held-out voices: generated {held_out['cloning/gen_wer']:.3f}, real target "
                         f"{held_out['cloning/gen_wer_target']:.3f} (the floor)")  # fmt: skip
        else:
            lines.append("Word error rate: off (no offline ASR ships in a package; add monitor.asr_model=<a local "
                         "transformers Whisper directory> to log cloning/gen_wer)")  # fmt: skip
        lines.append("TensorBoard: the CUSTOM SCALARS tab shows train, eval, cloning, perf and the health counters "
                     "(non-zero first); a short run's eval charts have a point per evaluation only: untick \"Ignore "
                     "outliers in chart scaling\" in the settings if they look empty")  # fmt: skip
        return lines


def training_voices_gain(trainer: Trainer) -> dict[str, float]:
    """The conditioning gain of the trained model on its own training set (all ranks take part); {} (not measured)
    when the run evaluates nothing (`train.eval_every=0` or `monitor.conditioning_gain=false`)."""
    if trainer.evaluator is None or not trainer.cfg.monitor.conditioning_gain:
        return {}
    evaluator = trainer.evaluator.with_dataset(trainer.data.dataset)
    gain = ConditioningGain(evaluator, trainer.data.layout, trainer.cfg.whisper.enabled, trainer.cfg.train.seed,
                            verbose=False)  # fmt: skip
    values = evaluator.run(trainer.engine)
    return {**values, **gain.run(trainer.engine, values)}


def run_demo(output_dir: str | Path, steps: int, overrides: list[str] | tuple[str, ...] = ()) -> DemoResult:
    out = Path(output_dir).resolve()
    rank, _, _ = init_distributed()
    codec_file = out / "codec" / "tiny_dac.pth"
    if rank == 0:
        log.info("demo: building the corpus in %s", out / "corpus")
        manifest = make_demo_corpus(out / "corpus", eval_speakers=EVAL_SPEAKERS)
        if not codec_file.is_file():
            codec_file.parent.mkdir(parents=True, exist_ok=True)
            tiny_dac(seed=0).save(str(codec_file))
    dist.barrier()
    manifest = out / "corpus" / "manifest.jsonl"
    precision = []
    bf16_ok, why = native_bf16()
    if not bf16_ok:
        # Emulated bf16 would blow the demo's time budget; the bf16 engine path itself is covered by the tests.
        log.warning("demo: %s, so bf16 is emulated and slow here; training in fp32 (ZeRO-2) instead", why)
        precision = [f"train.deepspeed_config={DEMO_CONFIG.parent / 'zero2_fp32.json'}"]
    cfg = load_run_config(
        DEMO_CONFIG,
        [
            f"data.manifest={manifest}",
            f"data.eval_manifest={manifest.parent / EVAL_MANIFEST}",  # voices the training set lacks
            f"data.codec_path={codec_file}",
            f"train.output_dir={out / 'run'}",
            f"train.max_steps={steps}",
            *precision,
            *overrides,
        ],
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    speaker = trainer.generation.speaker if trainer.generation is not None else None
    return DemoResult(result, training_voices_gain(trainer), dict(trainer.last_eval), speaker and speaker.name)
