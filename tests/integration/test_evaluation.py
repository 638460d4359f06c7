"""Held-out evaluation: batch/rank splitting, batching-independent metrics, no side effects, and the training loop's
eval/* scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ds_train.components.checkpoint import BEST_FILE, locate, pointed_tag
from ds_train.config import ConfigError, load_run_config
from ds_train.evaluation.held_out import Evaluator, eval_batches, rank_share
from ds_train.trainer import Trainer, train
from tests.helpers import make_config, read_audio, read_scalars, read_text

LENGTHS = [37, 5, 90, 12, 12, 60, 33, 71, 8, 45, 29, 100, 64]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 20])
@pytest.mark.parametrize(("batch_size", "max_tokens"), [(4, 0), (1, 0), (0, 150)])
def test_every_example_is_counted_exactly_once_and_ranks_run_equal_forwards(
    world_size: int, batch_size: int, max_tokens: int
) -> None:
    batches = eval_batches(LENGTHS, batch_size, max_tokens)
    if max_tokens:
        assert all(max(LENGTHS[i] for i in b) * len(b) <= max_tokens for b in batches)
    shares = [rank_share(batches, r, world_size) for r in range(world_size)]
    assert len({len(s) for s in shares}) == 1  # same number of forwards on every rank (ZeRO-3 gathers collectively)
    counted = sorted(i for s in shares for indices, counted in s if counted for i in indices)
    assert counted == list(range(len(LENGTHS)))


def test_an_empty_eval_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        rank_share([], 0, 1)


def test_eval_metrics_do_not_depend_on_batching_and_leave_the_model_alone(assets, tmp_path: Path) -> None:
    trainer = Trainer(make_config(assets, tmp_path, f"data.eval_manifest={assets.manifest}"))
    trainer.train_step()
    module = trainer.engine.module
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    results = []
    for batch_size, max_tokens in [(4, 0), (1, 0), (7, 0), (4, 3000)]:
        trainer.evaluator = Evaluator(
            trainer.data.eval_dataset, trainer.data.collator, trainer.prepare_batch, trainer.geometry.num_codebooks,
            batch_size, max_tokens, trainer.rank, trainer.world_size, trainer.device,
        )  # fmt: skip
        results.append(trainer.evaluate())
    first = results[0]
    assert first["eval/samples"] == len(trainer.data.eval_dataset) == 24 and first["eval/bad_samples"] == 0
    assert math.isfinite(first["eval/loss"]) and 0 < first["eval/audio_top1"] <= 1
    assert first["eval/loss"] == pytest.approx(sum(first[f"eval/codebook_loss/{k}"] for k in range(4)))
    for other in results[1:]:  # token-weighted over the whole set: the same whatever the micro-batches
        for key in ("eval/loss", "eval/audio_top1", "eval/codebook_loss/0", "eval/codebook_top1/3"):
            assert other[key] == pytest.approx(first[key], rel=1e-5, abs=1e-6), key
    assert trainer.engine.training  # back in training mode, weights untouched
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())
    assert math.isfinite(trainer.train_step().values["train/loss"])


def test_training_logs_eval_scalars_every_eval_every_steps_and_at_the_end(assets, tmp_path: Path) -> None:
    result = train(make_config(
        assets, tmp_path, f"data.eval_manifest={assets.manifest}", "train.eval_every=2", "train.max_steps=3",
    ))  # fmt: skip
    assert sorted(result.eval_losses) == [2, 3]
    scalars = read_scalars(tmp_path / "tensorboard")
    assert sorted(scalars["eval/loss"]) == [2, 3] and sorted(scalars["eval/codebook_top1/0"]) == [2, 3]
    assert scalars["eval/samples"][3] == 24
    assert scalars["eval/loss"][3] == pytest.approx(result.eval_losses[3])
    assert "train/loss" in scalars and sorted(scalars["train/loss"]) == [1, 2, 3]
    # The first evaluation is the best so far by definition: checkpointed although save_every is 100.
    best_step = min(result.eval_losses, key=result.eval_losses.get)
    assert pointed_tag(tmp_path / "checkpoints", BEST_FILE) == f"global_step{best_step}"
    assert (tmp_path / "checkpoints" / "global_step2").is_dir()
    # A held-out sample is decoded to TensorBoard at each evaluation, next to the training samples, each clip captioned.
    audio, cards = read_audio(tmp_path / "tensorboard"), read_text(tmp_path / "tensorboard")
    assert [e.step for e in audio["eval_samples/predicted_teacher_forced"]] == [2, 3]
    assert {"eval_samples/reference", "eval_samples/target", "samples/target"} <= set(audio)
    # ...and every one of the monitor.generate_samples (4) eval examples is generated free-running (greedy) and logged
    # with its reference and real target, captioned with sample id, speaker and transcript
    rows = [json.loads(line) for line in assets.manifest.read_text().splitlines()]
    for k in range(4):
        for role, text in (("reference", rows[k]["ref_text"]), ("target", rows[k]["text"])):
            clips = audio[f"eval_generated/{k}/{role}"]
            assert [e.step for e in clips] == [2, 3] and clips[0].wav[:4] == b"RIFF"
            assert clips[0].description == f'{role} | sample {rows[k]["id"]} | speaker {rows[k]["speaker"]} | "{text}"'
        assert f"| {k}: generated | {rows[k]['id']} | {rows[k]['speaker']} | {rows[k]['text']} |" in (
            cards["eval_generated/captions"][3])
    assert "speaker similarity by resemblyzer 0.1.4 GE2E" in cards["eval_generated/captions"][3]
    # ...with free-running metrics over them, the speaker similarity by the offline default encoder included
    assert scalars["cloning/gen_samples"] == {2: 4.0, 3: 4.0}
    assert all(0 <= scalars[f"cloning/gen_{k}"][3] <= 1 for k in ("stop_rate", "silence_share"))
    assert -1 <= scalars["cloning/gen_speaker_sim_target"][3] <= 1
    # ...and their spectrograms stacked, one image per generated sample (reference / target / generated), readable
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert all([e.step for e in acc.Images(f"eval_generated/{k}/spectrograms")] == [2, 3] for k in range(4))
    image = acc.Images("eval_generated/0/spectrograms")[0]
    assert image.width >= 800 and image.height >= 3 * 110
    assert [e.step for e in acc.Images("samples/spectrograms")] == [1]


def test_eval_config_errors(assets, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        load_run_config(None, ["data.eval_manifest=a.jsonl", "data.eval_prepared=b"])
    trainer = Trainer(make_config(assets, tmp_path))
    assert trainer.evaluator is None
    with pytest.raises(ValueError, match="no eval set"):
        trainer.evaluate()


def test_best_checkpoint_is_kept_apart_from_keep_last_and_survives_resume(assets, tmp_path: Path) -> None:
    cfg = make_config(assets, tmp_path, f"data.eval_manifest={assets.manifest}", "train.keep_last=1")
    trainer = Trainer(cfg)
    ckpts = tmp_path / "checkpoints"

    def step_then_save(eval_loss: float) -> tuple[list[str], str | None]:
        """One step, then the loop's save with this evaluation -> (checkpoint tags on disk, the best tag)."""
        trainer.train_step()
        trainer.save(best=trainer.best_eval.improves(eval_loss))
        return sorted(p.name for p in ckpts.iterdir() if p.is_dir()), pointed_tag(ckpts, BEST_FILE)

    assert step_then_save(5.0) == (["global_step1"], "global_step1")
    assert step_then_save(6.0) == (["global_step1", "global_step2"], "global_step1")  # worse: the best stays
    assert step_then_save(float("nan")) == (["global_step1", "global_step3"], "global_step1")
    assert step_then_save(4.0) == (["global_step4"], "global_step4")  # better: the old best goes
    resumed = Trainer(cfg, resume=True)
    assert resumed.best_eval.best == 4.0 and not resumed.best_eval.improves(4.5) and resumed.best_eval.improves(3.0)
    assert locate(tmp_path, "best") == (ckpts, "global_step4") == locate(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no 'global_step9' checkpoint \(tags: global_step4\)"):
        locate(tmp_path, "global_step9")
    off = make_config(assets, tmp_path / "off", f"data.eval_manifest={assets.manifest}", "train.keep_best=false")
    assert not Trainer(off).best_eval.improves(1.0)
