"""What a person sees first: the console line, the custom-scalars layout (groups in order, non-zero health counters
first), the run card and hparams at step 0, gradient clipping as a moving value, and readable prompt cards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from ds_train.config import RunConfig
from ds_train.evaluation.sample_logger import captions_table, collapse_special_runs, plain_text
from ds_train.model.loss import LossSums
from ds_train.monitor.dashboard import scalar_layout
from ds_train.monitor.metrics import MetricsProcessor, StepMeasurement, clip_scale

TAGS = {"train/loss", "train/grad_norm", "train/lr", "train/lr_scheduled", "train/codebook_loss/0",
        "train/codebook_loss/1", "eval/loss", "eval/codebook_top1/0", "cloning/gen_speaker_sim",
        "cloning/gen_speaker_sim_target", "cloning/conditioning_gain_cb0", "cloning/conditioning_gain_cb1",
        "perf/tokens_per_s", "health/grad_norm", "health/lr_low", "monitor/dropped_samples"}  # fmt: skip


def test_layout_groups_in_order_with_companions_and_families() -> None:
    layout = scalar_layout(TAGS, nonzero={"monitor/dropped_samples"})
    assert list(layout) == ["train", "eval", "cloning", "perf", "health (non-zero first)"]
    train = list(layout["train"])
    assert train[:3] == ["train/loss", "train/grad_norm", "train/lr vs train/lr_scheduled"]
    assert "train/codebook_loss/*" in train and not any(t.endswith("/0") for t in train)
    assert layout["eval"]["eval/loss vs train/loss"] == ["Multiline", ["^eval/loss$", "^train/loss$"]]
    cloning = layout["cloning"]
    assert list(cloning)[0] == "cloning/gen_speaker_sim vs cloning/gen_speaker_sim_target"  # ceiling beside it
    assert list(cloning)[1] == "cloning/conditioning_gain_cb*" and len(cloning) == 2  # one chart per codebook family
    health = list(layout["health (non-zero first)"].items())
    assert health[0][0] == "monitor/dropped_samples"
    assert health[1] == ("2 counters at 0 so far", ["Multiline", ["^health/grad_norm$", "^health/lr_low$"]])
    for charts in layout.values():  # every chart's regexes match tags
        for _, (_, patterns) in charts.items():
            assert all(any(re.search(p, t) for t in TAGS) for p in patterns)


def test_clip_scale_moves_with_the_norm() -> None:
    assert clip_scale(0.5, 1.0) == 1.0 and clip_scale(4.0, 0.0) == 1.0
    assert abs(clip_scale(4.0, 1.0) - 0.25) < 1e-6


def _measurement(step: int) -> StepMeasurement:
    sums = LossSums(2)
    sums.samples, sums.tokens = 4.0, 400.0
    return StepMeasurement(step, sums, grad_norm=2.0, lr=1e-3, lr_scheduled=1e-3, seconds=0.5, data_wait_seconds=0.1,
                           epoch=1.25)  # fmt: skip


def test_metrics_write_the_layout_run_card_and_hparams(tmp_path: Path) -> None:
    metrics = MetricsProcessor(tmp_path, True, 10, 100, 1, 25.0, 1.0, torch.nn.Linear(2, 2))
    metrics.log_run_card(RunConfig(), {"output_dir": tmp_path, "manifest": "/data/m.jsonl", "prepared": None}, "cpu")
    values = metrics.step_values(_measurement(1), {"health/grad_norm": 0.0, "monitor/dropped_samples": 0.0})
    assert values["train/grad_clip_scale"] < 0.51 and values["train/epoch"] == 1.25
    line = metrics.console_line(1, values)
    for part in ("step     1/100", "epoch 1.25", "elapsed, ETA", "loss ", "grad norm 2 (clipped x0.50)", "lr 0.001",
                 "tok/s", "data wait 20%"):  # fmt: skip
        assert part in line, (part, line)
    metrics.log(1, values)
    metrics.log(2, {**values, "monitor/dropped_samples": 3.0})  # a counter leaves 0: the layout is rewritten
    metrics.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    layouts = acc.Tensors("custom_scalars__config__")
    assert [e.step for e in layouts] == [1, 2]
    last = layout_pb2.Layout.FromString(layouts[-1].tensor_proto.string_val[0])
    assert [c.title for c in last.category][0] == "train"
    assert [ch.title for ch in last.category[-1].chart][0] == "monitor/dropped_samples"
    card = acc.Tensors("run/config/text_summary")[0]
    text = card.tensor_proto.string_val[0].decode()
    assert card.step == 0 and "| manifest | `/data/m.jsonl` |" in text and "| torch |" in text
    assert '"max_steps"' in text and "prepared" not in text.split("| version")[0]  # unset paths left out
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content)
    assert start.session_start_info.hparams["train.max_steps"].number_value == RunConfig().train.max_steps


def test_prompt_card_collapses_special_token_runs() -> None:
    text = "hi<|AUDIO|><|AUDIO|><|AUDIO|><|audio_eos|><|AUDIO_OUT|><|AUDIO_OUT|> x"
    assert collapse_special_runs(text) == "hi<|AUDIO|> x 3<|audio_eos|><|AUDIO_OUT|> x 2 x"
    assert plain_text("\n\nSay this.<|audio_bos|><|AUDIO|><|audio_eos|>") == "Say this."
    table = captions_table([("target", "a_1", None, "x | y", 1.5)])
    assert table.splitlines()[2] == "| target | a_1 | ? | x / y | 1.50 |"


def test_known_dependency_warnings_hidden_unless_debugging() -> None:
    """The CLI hides the dependencies' deprecations (a real one: the codec's weight_norm) and keeps other warnings;
    DS_TRAIN_DEBUG_WARNINGS=1 shows them."""
    code = ("import warnings; from ds_train.__main__ import quiet_known_warnings; quiet_known_warnings(); "
            "import torch; torch.nn.utils.weight_norm(torch.nn.Linear(2, 2)); warnings.warn('something else')")
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
    assert "weight_norm" not in quiet and "something else" in quiet
    debug = {**env, "DS_TRAIN_DEBUG_WARNINGS": "1"}
    loud = subprocess.run([sys.executable, "-c", code], env=debug, capture_output=True, text=True, check=True).stderr
    assert "`torch.nn.utils.weight_norm` is deprecated" in loud
