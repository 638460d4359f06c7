"""Does the trainer teach zero-shot voice conditioning at CPU scale? (issue 13 learning benchmark; not in CI)

    python -m benchmarks.cloning_learning --whisper on|off [--steps 1800] [--eval-every 300] [--minutes 28]

The tiny preset (the demo's model, a random-init tiny DAC) trains on 16 eSpeak NG voices (variant, accent, pitch and
rate differ) that all say the same 12 sentences, so only the reference audio tells the voice; 4 more voices are held
out as the eval set. Every `--eval-every` steps the trainer's own evaluation records the conditioning gain on the
held-out voices (eval loss with another speaker's reference minus with the own: > 0 means the reference is used); at
the end the same gain is measured on the training voices. The run stops at `--steps` or after `--minutes`, whichever
comes first. Prints one row per evaluation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._corpus import REPO
from data_pipeline.codecs import tiny_dac
from data_pipeline.demo.corpus import EVAL_MANIFEST, make_demo_corpus
from ds_train.components.distributed import native_bf16
from ds_train.config import load_run_config
from ds_train.demo import training_voices_gain
from ds_train.trainer import Trainer

TRAINING_VOICES, HELD_OUT_VOICES = 16, 4
COLUMNS = ("cloning/conditioning_gain", "cloning/conditioning_gain_codes", "cloning/conditioning_gain_whisper",
           "cloning/gen_stop_rate", "cloning/gen_duration_ratio")  # fmt: skip


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--whisper", choices=("on", "off"), required=True)
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=28.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = REPO / "runs" / "cloning_learning"
    manifest = make_demo_corpus(root / "corpus", num_speakers=TRAINING_VOICES, eval_speakers=HELD_OUT_VOICES)
    codec_file = root / "tiny_dac.pth"
    if not codec_file.is_file():
        tiny_dac(seed=0).save(str(codec_file))
    out = Path(args.out or root / f"run_whisper_{args.whisper}")
    precision = [] if native_bf16()[0] else [f"train.deepspeed_config={REPO / 'ds_configs' / 'zero2_fp32.json'}"]
    cfg = load_run_config(REPO / "ds_configs" / "demo.yaml", [
        f"data.manifest={manifest}", f"data.eval_manifest={manifest.parent / EVAL_MANIFEST}",
        f"data.codec_path={codec_file}", f"train.output_dir={out}", f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}", f"train.max_wall_minutes={args.minutes}", "train.save_every=100000",
        "train.log_every=100", f"whisper.enabled={'true' if args.whisper == 'on' else 'false'}",
        "monitor.generate_samples=4", *precision,
    ])  # fmt: skip
    started = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.fit()
    trained = training_voices_gain(trainer)
    minutes = (time.perf_counter() - started) / 60
    scalars = read_scalars(out / "tensorboard")
    stopped = result.stopped_by or "max_steps"
    print(f"whisper {args.whisper}: {result.final_step} steps in {minutes:.1f} min (stopped by {stopped})")
    print("| step | train loss | held-out eval loss | held-out gain | codes alone | whisper alone | gen stop rate | "
          "gen duration ratio |")  # fmt: skip
    print("|---" * 8 + "|")
    for step in sorted(scalars.get("cloning/conditioning_gain", {})):
        cells = [f"{scalars[key][step]:+.4f}" if step in scalars.get(key, {}) else "n/a" for key in COLUMNS]
        nearest = min(scalars["train/loss"], key=lambda s, step=step: abs(s - step))
        print(f"| {step} | {scalars['train/loss'][nearest]:.3f} | {scalars['eval/loss'][step]:.3f} | "
              + " | ".join(cells) + " |")  # fmt: skip
    gain = trained.get("cloning/conditioning_gain")
    print(f"training voices at the end: gain {gain:+.4f} nats" if gain is not None else "training voices: no gain")


if __name__ == "__main__":
    main()
