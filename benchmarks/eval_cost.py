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

from ds_train.conditioning import ConditioningGain
from ds_train.demo import run_demo
from ds_train.evaluation import Evaluator
from ds_train.generation_eval import GenerationEvaluator
from ds_train.trainer import Trainer

SECONDS: dict[str, float] = defaultdict(float)


def _timed(name: str, method):
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", default="runs/eval_cost")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    shutil.rmtree(f"{args.output_dir}/run", ignore_errors=True)
    Trainer.train_step = _timed("steps", Trainer.train_step)
    Trainer._evaluate_and_log = _timed("evaluations", Trainer._evaluate_and_log)
    Trainer._log_generated = _timed("generation", Trainer._log_generated)
    Trainer._build_generation = _timed("building the generation evaluator", Trainer._build_generation)
    Evaluator.run = _timed("eval passes (own references, swapped ones)", Evaluator.run)
    ConditioningGain.run = _timed("swapped-reference passes", ConditioningGain.run)
    GenerationEvaluator._measure = _timed("measuring generated audio", GenerationEvaluator._measure)
    run_demo(args.output_dir, args.steps, args.overrides)
    steps, evals, gen = SECONDS["steps"], SECONDS["evaluations"], SECONDS["generation"]
    print(f"optimizer steps {steps:.1f} s, evaluations {evals:.1f} s (of which generation {gen:.1f} s): "
          f"evaluation share {evals / (steps + evals):.1%} of step + evaluation time")  # fmt: skip
    for name, seconds in SECONDS.items():
        if name not in ("steps", "evaluations", "generation"):
            print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
