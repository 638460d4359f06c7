"""Checkpoint pruning, clean stops (SIGTERM, wall time), SIGKILL + exact resume on 2 ranks, rank-count changes,
torchrun, activation checkpointing."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.loading.samplers import DataPosition
from ds_train.components.distributed import SHM_ALLREDUCE_PREFIX, SHM_DIR
from ds_train.config import ConfigError, RunConfig
from ds_train.errors import CheckpointError
from ds_train.model.build import build_model
from ds_train.trainer import Trainer, train
from tests.helpers import (
    CONFIGS,
    GEO,
    command_env,
    free_port,
    inject,
    make_config,
    read_scalars,
    run_command,
    tiny_model_and_batch,
    train_args,
)


def test_keep_last_prunes_old_checkpoints_and_latest_is_complete(assets, tmp_path: Path) -> None:
    result = train(make_config(assets, tmp_path, "train.max_steps=5", "train.save_every=1", "train.keep_last=2"))
    tags = sorted(p.name for p in result.checkpoint_dir.iterdir() if p.is_dir())
    assert tags == ["global_step4", "global_step5"]
    assert (result.checkpoint_dir / "latest").read_text() == "global_step5"
    assert (result.checkpoint_dir / "global_step5" / "ds_train_meta.json").is_file()


def test_sigterm_saves_and_stops_cleanly(assets, tmp_path: Path) -> None:
    trainer = Trainer(make_config(assets, tmp_path, "train.max_steps=50", "train.save_every=100"))

    def send_sigterm(index: int, batch: dict) -> dict:
        if index == 2:
            signal.raise_signal(signal.SIGTERM)  # arrives in the middle of step 3
        return batch

    inject(trainer, send_sigterm)
    result = trainer.fit()
    assert result.stopped_by == "SIGTERM" and result.final_step == 3
    assert (tmp_path / "checkpoints" / "latest").read_text() == "global_step3"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_wall_time_limit_saves_and_stops(assets, tmp_path: Path) -> None:
    result = train(make_config(assets, tmp_path, "train.max_steps=50", "train.max_wall_minutes=0.000001"))
    assert result.stopped_by == "wall-time limit" and result.final_step == 1
    assert (tmp_path / "checkpoints" / "latest").read_text() == "global_step1"


def test_two_rank_sigkill_after_save_then_resume_matches_uninterrupted(assets, tmp_path: Path) -> None:
    """deepspeed launcher, 2 CPU ranks, fp32 ZeRO-2: rank 0 is SIGKILLed right after the step-3 checkpoint."""
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--module", "ds_train"]
    common = ["train.max_steps=6", "train.save_every=3", "data.num_workers=0"]

    ports: list[int] = []

    def launch(out: Path, *extra: str, check: bool = True):
        ports.append(free_port())
        cmd = [
            *launcher[:3],
            "--master_port",
            str(ports[-1]),
            *launcher[3:],
            *train_args(assets, out),
            *common,
            *extra,
        ]
        if check:
            return run_command(cmd)
        import subprocess

        return subprocess.run(cmd, env=command_env(), capture_output=True, text=True, timeout=600)

    launch(tmp_path / "full")
    killed = launch(tmp_path / "killed", "train.debug_kill_after_step=3", check=False)
    assert killed.returncode != 0
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text() == "global_step3"
    # DeepSpeed's CPU all-reduce buffers (64 MiB of RAM per rank) do not outlive a finished run or a killed one
    assert not list(SHM_DIR.glob(f"{SHM_ALLREDUCE_PREFIX}_*_{ports[0]}_*")), "a finished run left its shm buffers"
    assert not list(SHM_DIR.glob(f"{SHM_ALLREDUCE_PREFIX}_*_{ports[1]}_*")), "a killed run left its shm buffers"
    launch(tmp_path / "killed", "--resume")
    full = read_scalars(tmp_path / "full" / "tensorboard")["train/loss"]
    resumed = read_scalars(tmp_path / "killed" / "tensorboard")["train/loss"]
    for step in (4, 5, 6):
        assert resumed[step] == full[step], (step, resumed[step], full[step])

    # The same 2-rank checkpoint on 1 rank: a clear error that names the conversion command.
    with pytest.raises(ConfigError, match=r"(?s)written by 2 data-parallel rank\(s\).*ds_to_universal"):
        Trainer(make_config(assets, tmp_path / "killed", "train.max_steps=6"), resume=True)

    # ...and the conversion it names works: 1 rank resumes from the universal checkpoint and keeps training.
    ckpts = tmp_path / "killed" / "checkpoints"
    convert = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal"]
    run_command([*convert, "--input_folder", str(ckpts / "global_step6"),
                 "--output_folder", str(ckpts / "global_step6_universal"),
                 "--num_extract_workers", "1", "--num_merge_workers", "1"])  # fmt: skip
    (ckpts / "latest").write_text("global_step6_universal")
    ds = json.loads((CONFIGS / "zero2_fp32.json").read_text())
    ds["checkpoint"] = {"load_universal": True}
    (tmp_path / "universal.json").write_text(json.dumps(ds))
    cfg = make_config(
        assets, tmp_path / "killed", "train.max_steps=8", f"train.deepspeed_config={tmp_path / 'universal.json'}"
    )
    trainer = Trainer(cfg, resume=True)
    assert trainer.step == 6 and trainer.world_size == 1
    # 2 ranks x 6 micro-batches of 4 = two whole epochs of the 24 examples: 1 rank goes on with epoch 2 (counting
    # its own 6 micro-batches as one epoch of 6 would replay epoch 1).
    assert trainer.batches.sampler.position(trainer.batches.fetched) == DataPosition(epoch=2, offset=0, consumed=6)
    stats = trainer.train_step()
    assert stats.step == 7 and stats.values["train/loss"] < full[1]


def test_torchrun_two_ranks_with_uneven_data(assets, tmp_path: Path) -> None:
    """24 examples in micro-batches of 5 over 2 ranks do not divide evenly; every rank still stops at step 3, and the
    evaluation (5 micro-batches over 2 ranks) counts each of the 24 eval examples once without hanging."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = run_command([
        torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "ds_train",
        *train_args(assets, tmp_path), "data.micro_batch_size=5", "train.max_steps=3", "data.num_workers=0",
        f"data.eval_manifest={assets.manifest}", "train.eval_every=2",
    ])  # fmt: skip
    assert "on 2 rank(s)" in proc.stderr
    scalars = read_scalars(tmp_path / "tensorboard")
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
    assert scalars["eval/samples"] == {2: 24.0, 3: 24.0}


def _saved_activation_bytes(model, batch) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return total


def test_activation_checkpointing_reduces_saved_activations() -> None:
    model, batch, _ = tiny_model_and_batch(whisper=True)
    plain = _saved_activation_bytes(model, batch)
    cfg = RunConfig()
    cfg.train.activation_checkpointing = True
    from data_pipeline.layout.text_tokens import build_tiny_tokenizer

    torch.manual_seed(0)
    ckpt_model = build_model(cfg, build_tiny_tokenizer(), GEO)
    ckpt_model.load_state_dict(model.state_dict())
    checkpointed = _saved_activation_bytes(ckpt_model, batch)
    assert checkpointed < 0.6 * plain, (checkpointed, plain)
    # same maths: the gradients agree
    model.zero_grad()
    ckpt_model.zero_grad()
    model(**batch).loss.backward()
    ckpt_model(**batch).loss.backward()
    for (name, a), (_, b) in zip(model.named_parameters(), ckpt_model.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_complete_one(assets, tmp_path: Path, caplog) -> None:
    """Issue 22 §6: a truncated file of the newest tag (a crash mid-copy, a full disk) made every rank print
    DeepSpeed's traceback. The resume verifies the tag, says why it is not used, and continues exactly from the one
    before; with no complete tag left it stops with one line naming the file."""
    whole = train(make_config(assets, tmp_path / "whole", "train.max_steps=4", "train.save_every=2"))
    run = tmp_path / "run"
    train(make_config(assets, run, "train.max_steps=4", "train.save_every=2"))
    ckpt = run / "checkpoints"
    shard = sorted((ckpt / "global_step4").glob("*optim_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="ds_train"):
        resumed = train(make_config(assets, run, "train.max_steps=4", "train.save_every=2"), resume=True)
    assert any("global_step4 is damaged" in r.message and shard.name in r.message and "global_step2" in r.message
               for r in caplog.records), [r.message for r in caplog.records]  # fmt: skip
    assert resumed.losses[3] == whole.losses[3] and resumed.losses[4] == whole.losses[4]

    (ckpt / "global_step2" / "mp_rank_00_model_states.pt").unlink()
    shard = sorted((ckpt / "global_step4").glob("*optim_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"latest checkpoint is damaged: .*optim_states.pt has 100 bytes"):
        Trainer(make_config(assets, run, "train.max_steps=6"), resume=True)
