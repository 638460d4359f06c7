"""The share of the demo's training time its evaluations take (issue 13 budget: at most 5 % at the default cadence).

    python -m benchmarks.eval_cost [--output-dir runs/eval_cost] [overrides ...]

Runs the real demo (`python -m ds_train demo`: 300 steps, an evaluation every 100 with the conditioning-gain passes
and the batched generation of `monitor.generate_samples` held-out samples) with timers around the trainer's
evaluations and optimizer steps, then prints both totals and the evaluation share.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import defaultdict

from ds_train.demo import run_demo
from ds_train.evaluation.conditioning import ConditioningGain
from ds_train.evaluation.generation_eval import GenerationEvaluator
from ds_train.evaluation.sample_logger import SampleLogger
from ds_train.trainer import Trainer

SECONDS: dict[str, float] = defaultdict(float)
INSIDE_EVALUATION = [False]


def _timed(name: str, method, within_evaluations: bool = True):
    """`method` with its time added to SECONDS[name]; with `within_evaluations`, only while an evaluation runs (the
    same methods also serve training-time logging and the demo's closing passes)."""

    def wrapper(self, *args, **kwargs):
        counted = not within_evaluations or INSIDE_EVALUATION[0]
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            if counted:
                SECONDS[name] += time.perf_counter() - started

    return wrapper


def _evaluation(method):
    def wrapper(self, *args, **kwargs):
        INSIDE_EVALUATION[0] = True
        try:
            return method(self, *args, **kwargs)
        finally:
            INSIDE_EVALUATION[0] = False

    return _timed("evaluations", wrapper, within_evaluations=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", default="runs/eval_cost")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    shutil.rmtree(f"{args.output_dir}/run", ignore_errors=True)
    Trainer.train_step = _timed("steps", Trainer.train_step, within_evaluations=False)
    Trainer._evaluate_and_log = _evaluation(Trainer._evaluate_and_log)
    Trainer.evaluate = _timed("teacher-forced passes (eval set with own and swapped references)", Trainer.evaluate)
    ConditioningGain.run = _timed("  of which swapped-reference passes", ConditioningGain.run)
    SampleLogger.log = _timed("logging the eval sample (decoded audio)", SampleLogger.log)
    GenerationEvaluator.run = _timed("generating", GenerationEvaluator.run)
    GenerationEvaluator._measure = _timed("  of which measuring generated audio", GenerationEvaluator._measure)
    SampleLogger.log_generated = _timed("logging generated audio and spectrogram images", SampleLogger.log_generated)
    run_demo(args.output_dir, args.steps, args.overrides)
    steps, evals = SECONDS.pop("steps"), SECONDS.pop("evaluations")
    print(f"optimizer steps {steps:.1f} s, evaluations {evals:.1f} s: evaluation share {evals / (steps + evals):.1%} "
          "of step + evaluation time; within the evaluations:")
    for name, seconds in SECONDS.items():
        print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
