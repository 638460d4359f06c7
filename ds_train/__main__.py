"""Command line of the trainer.

python -m ds_train train --config run.yaml [section.key=value ...] [--resume | --auto-resume]
python -m ds_train demo [--steps N] [--output-dir DIR] [section.key=value ...]
python -m ds_train doctor --config run.yaml [section.key=value ...]
python -m ds_train info [--preset 3b] [--whisper large-v3|off]
python -m ds_train info --config run.yaml --gpus N [--gpu-memory-gib G] [section.key=value ...]
python -m ds_train info --check-model DIR [--codec-path DIR]

Options and section.key=value overrides may come in any order. An expected error (config, missing file, bad input,
bad checkpoint, world-size mismatch, health halt) prints one `error: ...` line and exits with its own code (README
"Errors and exit codes"); add --traceback (or set DS_TRAIN_TRACEBACK=1) for the full trace. Known dependency
warnings that tell the user nothing are hidden; DS_TRAIN_DEBUG_WARNINGS=1 shows them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

# Deprecations inside dependencies (the codec's weight_norm, torch's own TypedStorage and jit, resemblyzer's scipy
# import): nothing a user of this trainer can act on. Shown with DS_TRAIN_DEBUG_WARNINGS=1.
KNOWN_WARNINGS = (
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated"),
    (UserWarning, r"TypedStorage is deprecated"),
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
    (DeprecationWarning, r"Please import `binary_dilation` from the `scipy\.ndimage` namespace"),
)


def quiet_known_warnings() -> None:
    if os.environ.get("DS_TRAIN_DEBUG_WARNINGS") == "1":
        return
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _setup_logging() -> None:
    quiet_known_warnings()
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(message)s",
        datefmt="%H:%M:%S",
    )
    # DeepSpeed's own INFO lines drown the training log; warnings still show.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from data_pipeline.errors import run_cli
    from ds_train.errors import TRAINER_ERRORS

    return run_cli(_main, argv, TRAINER_ERRORS)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, except that overrides (section.key=value) may also follow options, e.g. `--resume train.lr=1e-4`:
    argparse fills the `overrides` positional once, so later ones come back unrecognized and are appended here."""
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if "=" in a and not a.startswith("-")]
    if late and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *late]
        extra = [a for a in extra if a not in late]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (required options, unset ones)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False
        if action.required or unset or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ds_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train from a run config")
    p_train.add_argument("--config", required=True, help="run config YAML (see ds_configs/)")
    p_train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output dir")
    p_train.add_argument(
        "--auto-resume", action="store_true", help="resume if the output dir has a checkpoint, else start fresh"
    )
    p_train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    p_demo = sub.add_parser("demo", help="synthesize a small corpus and train the tiny model on it")
    p_demo.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p_demo.add_argument("--output-dir", default="runs/demo", help="where corpus, logs and checkpoints go")
    p_demo.add_argument("overrides", nargs="*", help="section.key=value applied on top of ds_configs/demo.yaml")
    p_doc = sub.add_parser("doctor", help="one real step on the run config, then a pass/fail table of health checks")
    p_doc.add_argument("--config", required=True)
    p_doc.add_argument("overrides", nargs="*", help="section.key=value")
    p_exp = sub.add_parser("export", help="checkpoint (any ZeRO stage) -> a self-contained folder: transformers model, "
                           "tokenizer, Whisper tower, codec, run config")  # fmt: skip
    p_exp.add_argument("--checkpoint", required=True, help="run output dir, its checkpoints/ dir, or one tag dir")
    p_exp.add_argument("--out", required=True)
    p_exp.add_argument("--tag", default="latest", help="latest (default), best (lowest eval loss) or a tag name")
    checkpoint_help = "run output dir, its checkpoints/ dir, one tag dir, or an exported folder"
    tag_help = "latest, best (lowest eval loss) or a tag name (checkpoints only)"
    p_gen = sub.add_parser("generate", help="clone a reference voice speaking new text with a trained checkpoint",
                           formatter_class=_DefaultsFormatter)  # fmt: skip
    p_gen.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p_gen.add_argument("--tag", default="latest", help=tag_help)
    p_gen.add_argument("--ref-audio", required=True, help="reference recording of the voice to clone")
    p_gen.add_argument("--ref-text", required=True, help="what the reference recording says")
    p_gen.add_argument("--text", required=True, help="what the cloned voice should say")
    p_gen.add_argument("--out", required=True, help="wav file to write")
    p_gen.add_argument("--max-seconds", type=float, default=20.0, help="longest audio to generate")
    p_gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p_gen.add_argument("--top-k", type=int, default=0, help="with sampling: keep the k likeliest codes (0 = all)")
    p_gen.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    p_eval = sub.add_parser("evaluate", help="clone every line of a Seed-TTS-eval list (meta.lst) and measure it",
                            formatter_class=_DefaultsFormatter)  # fmt: skip
    p_eval.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p_eval.add_argument("--tag", default="latest", help=tag_help)
    p_eval.add_argument("--list", required=True, help="utt|prompt_text|prompt_wav|infer_text[|gt_wav] per line")
    p_eval.add_argument("--out", required=True, help="folder for wavs/, results.csv, summary.json/md (resumable)")
    p_eval.add_argument("--max-seconds", type=float, default=20.0, help="longest audio to generate per line")
    p_eval.add_argument("--speaker-model", default=None, help="local x-vector model dir for speaker similarity (none: "
                        "no similarity)")  # fmt: skip
    p_eval.add_argument("--asr-model", default=None, help="local Whisper ASR model dir for the word error rate (none: "
                        "no WER)")  # fmt: skip
    p_eval.add_argument("--language", default=None, help="language the ASR transcribes in (e.g. en, zh; none: "
                        "the ASR model detects it)")  # fmt: skip
    p_eval.add_argument("--batch-size", type=int, default=8, help="lines generated together (greedy: same audio)")
    p_info = sub.add_parser("info", help="parameter counts and ZeRO memory of a preset, a run's memory plan, or a "
                            "model/codec folder against the published layout (meta device, no weights)")
    p_info.add_argument("--preset", default="3b")
    p_info.add_argument("--whisper", default="large-v3", help="whisper preset, or 'off'")
    p_info.add_argument("--config", default=None, help="run config YAML: print its per-GPU memory plan")
    p_info.add_argument("--gpus", type=int, default=1, help="with --config: data-parallel ranks (default 1)")
    p_info.add_argument("--gpu-memory-gib", type=float, default=None, help="with --config: say whether it fits")
    p_info.add_argument("--example-tokens", type=int, default=500,
                        help="with --config: padded tokens per example assumed (default 500: 10 s ref + 10 s target)")
    p_info.add_argument("--check-model", default=None, help="model folder to compare with the published layout")
    p_info.add_argument("--codec-path", default=None, help="Higgs codec folder to compare with the published one")
    p_info.add_argument("overrides", nargs="*", help="with --config: section.key=value")
    parser.add_argument("--traceback", action="store_true", help="on an expected error, show the full traceback")
    # The deepspeed launcher inserts --local_rank=N before the subcommand; LOCAL_RANK in the environment says the same.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    args = _parse(parser, argv)
    if args.command == "info":
        return _info(args)
    _setup_logging()

    if args.command == "train":
        from ds_train.config import load_run_config

        cfg = load_run_config(args.config, args.overrides)  # before the trainer's imports: a bad config fails fast
        from ds_train.trainer import has_checkpoint, train

        resume = args.resume or (args.auto_resume and has_checkpoint(cfg))
        result = train(cfg, resume=resume)
        _print_where(result)
        return 0
    if args.command == "export":
        from ds_train.export import export

        print(f"exported to {export(args.checkpoint, args.out, args.tag)}")
        return 0
    if args.command == "generate":
        from ds_train.inference.generate import clone_voice

        result = clone_voice(args.checkpoint, args.ref_audio, args.ref_text, args.text, args.out, args.tag,
                             args.max_seconds, args.temperature, args.top_k, args.seed)  # fmt: skip
        print(result.summary())
        return 0
    if args.command == "evaluate":
        from ds_train.evaluation.eval_list import evaluate_list

        summary = evaluate_list(args.checkpoint, args.list, args.out, args.tag, args.max_seconds, args.speaker_model,
                                args.asr_model, args.language, args.batch_size)  # fmt: skip
        if summary is not None:
            print((Path(args.out) / "summary.md").read_text(), end="")
        return 0
    if args.command == "doctor":
        from ds_train.config import load_run_config
        from ds_train.doctor import print_table, run_doctor

        checks = run_doctor(load_run_config(args.config, args.overrides))
        if os.environ.get("RANK", "0") != "0":
            return 0
        return 0 if print_table(checks) else 1
    if args.command == "demo":
        from ds_train.demo import run_demo

        demo = run_demo(args.output_dir, args.steps, args.overrides)
        _print_where(demo.train)
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(demo.summary()))
        return 0
    return 2


def _info(args: argparse.Namespace) -> int:
    """`info`: a folder check (exit 5 when it is not the published layout), a run's memory plan, or a preset."""
    from data_pipeline.errors import InputError, UsageError

    if args.check_model or args.codec_path:
        from ds_train.model.published import check_published_layout

        report = check_published_layout(args.check_model, args.codec_path)
        print(report.render())
        if not report.layout_ok:
            raise InputError("the folder(s) differ from the published layout (listed above); see docs/FINETUNE.md")
        return 0
    if args.config:
        from ds_train.config import load_run_config
        from ds_train.info import memory_plan

        if args.gpus < 1:
            raise UsageError(f"--gpus must be >= 1, got {args.gpus}")
        cfg = load_run_config(args.config, args.overrides)
        print(memory_plan(cfg, args.gpus, args.gpu_memory_gib, args.example_tokens, args.config).text)
        return 0
    if args.overrides:
        raise UsageError("section.key=value overrides need --config")
    from ds_train.info import describe

    print(describe(args.preset, None if args.whisper == "off" else args.whisper))
    return 0


def _print_where(result) -> None:
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"\nTensorBoard logs: {result.tensorboard_dir}")
    from ds_train.components.checkpoint import BEST_FILE, pointed_tag

    best_tag = pointed_tag(result.checkpoint_dir, BEST_FILE) if result.eval_losses else None
    best = f", best eval loss: {best_tag}" if best_tag else ""
    print(f"Checkpoints:      {result.checkpoint_dir} (latest: global_step{result.final_step}{best})")
    print(f"View them with:   tensorboard --logdir {result.tensorboard_dir}")
    shown = {"eval/loss": "loss", "cloning/conditioning_gain": "conditioning gain",
             "cloning/gen_stop_rate": "stop rate", "cloning/gen_duration_ratio": "duration ratio",
             "cloning/gen_silence_share": "silence",
             "cloning/gen_speaker_sim": "speaker similarity", "cloning/gen_wer": "WER"}  # fmt: skip
    last = [f"{name} {result.last_eval[key]:.4g}" for key, name in shown.items() if key in result.last_eval]
    if last:
        print(f"Last evaluation:  {', '.join(last)}")


if __name__ == "__main__":
    sys.exit(main())
