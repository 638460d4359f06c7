"""End to end through the real command line: the demo, train + --resume, and the deepspeed launcher with 2 ranks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CONFIGS, REPO, REQUIRED_SCALARS, command_env, free_port, read_scalars, run_command, train_args


def test_demo_short_mode(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_command([sys.executable, "-m", "ds_train", "demo", "--steps", "12", "--output-dir", str(out)])
    tb = out / "run" / "tensorboard"
    assert f"tensorboard --logdir {tb}" in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "/12 | epoch " in line]
    assert len(console) == 2 and "step    12/12 | epoch 2.00 | " in console[-1]  # step 1 and the last (log_every 25)
    for part in ("elapsed, ETA 0:00:00", "| loss ", "| grad norm ", "| lr ", "tok/s", "data wait"):
        assert part in console[-1], part
    # long phases are announced with their duration; the dependencies' known deprecations are hidden
    assert "weight_norm" not in proc.stderr and "TypedStorage" not in proc.stderr
    for phase in ("evaluation at step 12 (24 held-out samples)", "saving checkpoint global_step12",
                  "generating 4 held-out samples free-running (up to 10 s each)"):  # fmt: skip
        assert f"{phase} ..." in proc.stderr and re.search(re.escape(phase) + r".*: done in \d+\.\d s", proc.stderr)
    assert (out / "run" / "checkpoints" / "global_step12").is_dir()
    assert len(list((out / "corpus" / "wavs").glob("*.wav"))) == 72
    scalars = read_scalars(tb)
    assert REQUIRED_SCALARS <= set(scalars)
    assert sorted(scalars["train/loss"]) == list(range(1, 13))
    # The held-out speakers are evaluated at the last step, and are not in the training manifest.
    speakers = [{json.loads(line)["speaker"] for line in (out / "corpus" / name).open()}
                for name in ("manifest.jsonl", "eval_manifest.jsonl")]  # fmt: skip
    assert speakers == [{"spk0", "spk1", "spk2", "spk3"}, {"spk4", "spk5"}]
    assert scalars["eval/samples"] == {12: 24.0}
    # The conditioning gain: logged at each evaluation (two held-out voices swap references), and the summary prints it
    # for the training voices next to the held-out ones.
    gain = scalars["cloning/conditioning_gain"][12]
    assert scalars["cloning/loss_swapped_ref"][12] - scalars["eval/loss"][12] == pytest.approx(gain, abs=1e-4)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("Conditioning gain, ")]
    assert [line.split(":")[0] for line in summary] == [
        "Conditioning gain, training voices", "Conditioning gain, held-out voices"
    ]  # fmt: skip
    assert float(summary[1].split(": ")[1].split(" nats")[0]) == pytest.approx(gain, abs=2e-4)
    # speaker similarity without any download (generated and the real target's ceiling), and how to get a WER
    similarity = next(line for line in proc.stdout.splitlines() if line.startswith("Speaker similarity, held-out"))
    assert f"generated vs reference {scalars['cloning/gen_speaker_sim'][12]:.3f}" in similarity
    assert f"real target vs reference {scalars['cloning/gen_speaker_sim_target'][12]:.3f} (the ceiling)" in similarity
    assert similarity.endswith("by resemblyzer 0.1.4 GE2E (offline default)")
    assert "Word error rate: off (" in proc.stdout and "monitor.asr_model=" in proc.stdout
    assert "swapped alone: codes " in summary[0]
    assert "(latest: global_step12, best eval loss: global_step12)" in proc.stdout
    last = next(line for line in proc.stdout.splitlines() if line.startswith("Last evaluation:"))
    assert f"loss {scalars['eval/loss'][12]:.4g}" in last and "conditioning gain" in last and "stop rate" in last
    assert any("eval     12 | loss" in line for line in proc.stderr.splitlines())
    assert scalars["train/loss"][12] < scalars["train/loss"][1]
    assert all(v > 0 for v in scalars["train/lr"].values())




def test_train_and_resume_cli(assets, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "ds_train", *train_args(assets, tmp_path), "train.save_every=2"]
    run_command([*base, "train.max_steps=2", "--auto-resume"])  # nothing to resume yet: starts fresh
    proc = run_command([*base, "train.max_steps=4", "--resume"])
    assert "resumed from" in proc.stderr and "step 2 -> 4" in proc.stderr
    assert sorted(read_scalars(tmp_path / "tensorboard")["train/loss"]) == [1, 2, 3, 4]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "global_step4"




def test_deepspeed_launcher_two_ranks(assets, tmp_path: Path) -> None:
    launcher = Path(sys.executable).parent / "deepspeed"
    port = str(free_port())
    proc = run_command(
        [str(launcher), "--num_gpus", "2", "--master_port", port, "--module", "ds_train",
         *train_args(assets, tmp_path), "train.max_steps=3", "data.num_workers=0"]
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "on 2 rank(s)" in log
    assert sorted(read_scalars(tmp_path / "tensorboard")["train/loss"]) == [1, 2, 3]
    # ZeRO-2 partitions the optimizer state: one shard per rank
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "global_step3").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


def test_multi_node_script_with_a_localhost_hostfile(assets, tmp_path: Path) -> None:
    """launch/train_multi_node.sh with one host of 2 slots, started without ssh (as on each node by hand)."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = dict(command_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               DS_LAUNCH_EXTRA="--no_ssh --node_rank 0")  # fmt: skip
    args = train_args(assets, tmp_path / "run")[3:]  # drop "train --config X": the script adds them
    cmd = ["bash", str(REPO / "launch" / "train_multi_node.sh"), str(hostfile), str(CONFIGS / "demo.yaml"), *args,
           "train.max_steps=2", "data.num_workers=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stderr
    assert sorted(read_scalars(tmp_path / "run" / "tensorboard")["train/loss"]) == [1, 2]


def test_single_node_script_uses_the_active_environment_and_the_callers_folder(assets, tmp_path: Path) -> None:
    """A run config in the user's own folder with relative paths (a copy of demo.yaml: its DeepSpeed JSON is found in
    ds_configs/), started from another folder: the script uses the active environment (no .venv, PYTHON=/bin/false
    would stop one being made), relative paths resolve where the user stands."""
    own, work = tmp_path / "configs", tmp_path / "work"
    own.mkdir()
    work.mkdir()
    yaml_text = (CONFIGS / "demo.yaml").read_text().replace("  codec: dac\n", (
        f"  codec: dac\n  manifest: {os.path.relpath(assets.manifest, own)}\n"
        f"  codec_path: {os.path.relpath(assets.codec_file, own)}\n"
    ))  # fmt: skip
    (own / "run.yaml").write_text(yaml_text.replace("zero2_bf16.json", "zero2_fp32.json"))
    env = dict(command_env(), PYTHON="/bin/false", VENV=str(tmp_path / "no_venv"), MASTER_PORT=str(free_port()),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
    cmd = ["bash", str(REPO / "launch" / "train_single_node.sh"), "1", "../configs/run.yaml", "train.max_steps=2",
           "train.output_dir=runs/mine", "data.num_workers=0", "data.micro_batch_size=4", "whisper.enabled=false"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"[setup] using the active Python environment: {Path(sys.executable).parent}" in proc.stdout
    assert not (tmp_path / "no_venv").exists()
    assert f"DeepSpeed config: {CONFIGS / 'zero2_fp32.json'}" in proc.stderr
    assert (work / "runs" / "mine" / "checkpoints" / "global_step2").is_dir()


@pytest.mark.parametrize("command, defaults", [
    ("generate", ["--max-seconds MAX_SECONDS longest audio to generate (default: 20.0)", "(default: latest)",
                  "0 = greedy; > 0 samples (default: 0.0)"]),
    ("evaluate", ["(default: 8)", "longest audio to generate per line (default: 20.0)", "(default: latest)"]),
])  # fmt: skip
def test_help_of_generate_and_evaluate_shows_the_defaults(command: str, defaults: list[str], capsys) -> None:
    from ds_train.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert all(d in shown for d in defaults), shown
    assert "(default: None)" not in shown


# ---------------------------------------------------------------------------------------------------- errors


def _fail(cmd: list[str], code: int, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run a command that must stop with an expected error: exit `code`, no traceback; -> its stderr."""
    proc = subprocess.run(cmd, cwd=REPO, env=env or command_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, (
        f"{' '.join(cmd)} -> {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc.stderr


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_config_error_is_one_line_with_its_exit_code_and_traceback_on_request(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ds_train", "train", "--config", str(tmp_path / "none.yaml")]
    stderr = _fail(cmd, 3)
    assert stderr.strip().splitlines()[-1] == f"error: run config {tmp_path / 'none.yaml'} does not exist"
    assert len(_error_lines(stderr)) == 1
    for extra, env in ((["--traceback"], command_env()), ([], dict(command_env(), DS_TRAIN_TRACEBACK="1"))):
        proc = subprocess.run([*cmd, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3 and "Traceback (most recent call last)" in proc.stderr
        assert "ds_train.config.ConfigError: run config" in proc.stderr
    # once per node: a rank other than local rank 0 exits with the same code and prints nothing
    quiet = _fail(cmd, 3, env=dict(command_env(), RANK="1", LOCAL_RANK="1"))
    assert not _error_lines(quiet)


def test_overrides_are_accepted_after_options(tmp_path: Path) -> None:
    """`--resume train.x=...` after earlier overrides used to be refused by argparse (exit 2)."""
    cmd = [sys.executable, "-m", "ds_train", "train", "--config", str(CONFIGS / "demo.yaml"), "train.max_steps=1",
           "--resume", "train.no_such_key=1"]  # fmt: skip
    assert "unknown config key 'train.no_such_key'" in _error_lines(_fail(cmd, 3))[0]


def test_missing_checkpoint_and_missing_manifest_exit_4(tmp_path: Path) -> None:
    export = [sys.executable, "-m", "ds_train", "export", "--checkpoint", str(tmp_path / "nothing"), "--out",
              str(tmp_path / "out")]  # fmt: skip
    assert _error_lines(_fail(export, 4)) == [f"error: {tmp_path / 'nothing'} is not a DeepSpeed checkpoint "
                                              "(no 'latest' file or *model_states.pt) nor an exported folder (no "
                                              "ds_train_export.json)"]  # fmt: skip
    prepare = [sys.executable, "-m", "data_pipeline.prepare", "--manifest", str(tmp_path / "m.jsonl"), "--codec",
               "dac", "--codec-path", str(tmp_path / "dac.pth"), "--out", str(tmp_path / "prep")]  # fmt: skip
    assert _error_lines(_fail(prepare, 4)) == [f"error: manifest {tmp_path / 'm.jsonl'} does not exist"]


def test_bad_model_path_and_prepared_set_are_named(assets, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    base = [sys.executable, "-m", "ds_train", *train_args(assets, tmp_path / "run"), "data.num_workers=0"]
    (line,) = _error_lines(_fail([*base, f"model.path={tmp_path / 'empty'}"], 3))
    assert f"model.path {tmp_path / 'empty'} is not a transformers model folder: no config.json and no tokenizer " \
        "files (one of tokenizer.json, tokenizer.model, vocab.json)" in line  # fmt: skip
    (line,) = _error_lines(_fail([*base, f"data.prepared={tmp_path / 'none'}", "data.manifest="], 5))
    assert line == (f"error: {tmp_path / 'none'} is not a prepared set: no such folder; make one with "
                    "python -m data_pipeline.prepare")  # fmt: skip


def test_bad_preset_and_unusable_whisper_checkpoint_are_one_line_errors(assets, tmp_path: Path) -> None:
    """Start-up errors a config or an input causes (they used to be plain ValueErrors with a traceback)."""
    from transformers import WhisperConfig

    base = [sys.executable, "-m", "ds_train", *train_args(assets, tmp_path / "run"), "data.num_workers=0"]
    (line,) = _error_lines(_fail([*base, "model.preset=huge"], 3))
    assert line == "error: unknown model preset 'huge' (model.preset); choose one of ['1b', '3b', 'tiny']"
    whisper = tmp_path / "whisper80"
    WhisperConfig(num_mel_bins=80).save_pretrained(str(whisper))  # a Whisper v1/v2 checkpoint's config
    (line,) = _error_lines(_fail([*base, f"whisper.path={whisper}"], 5))
    assert line.startswith(f"error: whisper.path {whisper}: the Whisper tower needs 128 mel bins") and "80" in line


def test_world_size_mismatch_and_health_halt_have_their_own_codes(assets, tmp_path: Path) -> None:
    run = tmp_path / "run"
    tag = run / "checkpoints" / "global_step2"
    tag.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("global_step2")
    (tag / "ds_train_meta.json").write_text(json.dumps({"world_size": 2}))
    base = [sys.executable, "-m", "ds_train", *train_args(assets, run), "data.num_workers=0"]
    stderr = _fail([*base, "--resume"], 7)
    assert _error_lines(stderr)[0].startswith(f"error: checkpoint {tag} was written by 2 data-parallel rank(s)")
    halt = [*base[:-1], f"train.output_dir={tmp_path / 'halt'}", "data.num_workers=0", "train.max_steps=3",
            "monitor.on_params_unchanged=halt", "monitor.halt_after=1", "train.lr=1e-30", "train.min_lr=0"]  # fmt: skip
    (line,) = _error_lines(_fail(halt, 8))
    assert "params_unchanged" in line and "set monitor.on_params_unchanged=warn" in line
