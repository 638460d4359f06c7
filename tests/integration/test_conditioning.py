"""Conditioning gain: the cross-speaker derangement, swapped examples, the cloning/conditioning_gain* scalars of a real
run, and the reference_ignored health check through the real trainer (an injected model that cannot see its
reference)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import SpecialTokenIds, build_tiny_tokenizer
from data_pipeline.loading.dataset import EncodedVoiceCloningDataset
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_swap import SwappedDataset, plan_swaps
from data_pipeline.prepare.build_set import PrepareConfig, prepare
from ds_train.monitor.health import HealthCheck, HealthError
from ds_train.trainer import Trainer, train
from tests.helpers import GEO, make_config, read_scalars

GAIN = "cloning/conditioning_gain"


@pytest.mark.parametrize(
    "speakers",
    [
        ["a", "a", "b", "b"],
        ["a", "b", "c", "a", "b", "c", "a"],
        ["a"] * 12 + ["b"] * 12,
        ["a"] * 9 + ["b", "c"],  # one speaker holds more than half: no permutation exists, still never the same voice
        ["a", None, "b", None, "b", "c"],  # unlabelled samples are left out, never paired
    ],
)
def test_derangement_never_pairs_a_speaker_with_itself_and_is_deterministic(speakers: list) -> None:
    plan = plan_swaps(speakers, seed=7)
    assert plan.indices == [i for i, s in enumerate(speakers) if s is not None]
    assert plan.unlabelled == speakers.count(None) and plan.speakers == len(set(speakers) - {None})
    for i, j in zip(plan.indices, plan.donors, strict=True):
        assert speakers[j] is not None and speakers[j] != speakers[i]
    assert plan_swaps(speakers, seed=7) == plan  # deterministic
    counts = {s: speakers.count(s) for s in set(speakers) - {None}}
    if 2 * max(counts.values()) <= len(plan.indices):  # every reference used exactly once
        assert sorted(plan.donors) == plan.indices


def test_derangement_depends_on_the_seed_and_refuses_one_speaker() -> None:
    speakers = [f"spk{i % 4}" for i in range(48)]
    assert len({tuple(plan_swaps(speakers, seed).donors) for seed in range(5)}) == 5
    assert "1 speaker" in plan_swaps(["a", "a", None], 0)
    assert "no sample has a speaker label" in plan_swaps([None, None], 0)


def _segments(example, layout: LayoutBuilder) -> tuple[int, int]:
    """(frames of the reference audio span, index in input_ids of the target's user turn)."""
    headers = (example.input_ids == layout.ids.start_header).nonzero().flatten().tolist()
    ref_frames = int((example.audio_labels == -100).all(1).cumprod(0).sum())  # reference frames are all unlabelled
    return ref_frames, headers[3]  # system, user (reference), assistant (reference audio), user (target text)


@pytest.fixture(scope="module")
def in_memory(assets, codec) -> tuple[LayoutBuilder, EncodedVoiceCloningDataset]:
    layout = LayoutBuilder(build_tiny_tokenizer(), GEO, LayoutOptions(whisper=True))
    return layout, EncodedVoiceCloningDataset(assets.manifest, codec, layout, show_progress=False)


def test_swapped_example_carries_the_donors_reference_and_its_own_target(in_memory) -> None:
    layout, dataset = in_memory
    assert set(dataset.speakers) == {"spk0", "spk1"}
    plan = plan_swaps(dataset.speakers, seed=0)
    for mode in ("all", "codes", "whisper"):
        swapped = SwappedDataset(dataset, layout, plan, mode)
        for k, (i, j) in enumerate(zip(plan.indices, plan.donors, strict=True)):
            ex, own, donor = swapped[k], dataset[i], dataset[j]
            assert ex.sample_id == own.sample_id and ex.num_tokens == swapped.lengths[k]
            ref_from = donor if mode in ("all", "codes") else own
            wave_from = donor if mode in ("all", "whisper") else own
            (n_ex, t_ex), (n_ref, t_ref), (n_own, t_own) = (_segments(e, layout) for e in (ex, ref_from, own))
            # the reference audio: the donor's codes (or its own, when only Whisper is swapped)
            assert n_ex == n_ref and torch.equal(ex.audio_frames[:n_ex], ref_from.audio_frames[:n_ref])
            # the target: its own codes, labels and text turn, whatever was swapped
            assert torch.equal(ex.audio_frames[n_ex:], own.audio_frames[n_own:])
            assert torch.equal(ex.audio_labels[n_ex:], own.audio_labels[n_own:])
            assert torch.equal(ex.input_ids[t_ex:], own.input_ids[t_own:])
            assert torch.equal(ex.labels[t_ex:], own.labels[t_own:])
            # the Whisper span and chunks: the donor's waveform (or its own, when only the codes are swapped)
            assert len(ex.whisper_chunks) == len(wave_from.whisper_chunks)
            assert all(torch.equal(a, b) for a, b in zip(ex.whisper_chunks, wave_from.whisper_chunks, strict=True))
            assert ex.whisper_tokens == wave_from.whisper_tokens
            if mode == "all":  # the whole prompt before the target turn is the donor's
                assert torch.equal(ex.input_ids[:t_ex], donor.input_ids[:t_ref])
            assert not torch.equal(ex.audio_frames[:n_ex], own.audio_frames[:n_own]) or mode == "whisper"


def test_a_prepared_set_swaps_like_the_in_memory_one(assets, in_memory, tmp_path: Path) -> None:
    layout, dataset = in_memory
    prepare(PrepareConfig(str(assets.manifest), "dac", str(assets.codec_file), str(tmp_path), 10), show_progress=False)
    prepared = PreparedDataset(tmp_path, layout)  # 3 shards: speakers are read from each shard's own column
    assert prepared.speakers == dataset.speakers == [json.loads(line)["speaker"] for line in assets.manifest.open()]
    plan = plan_swaps(prepared.speakers, seed=3)
    for mode in ("all", "codes", "whisper"):
        a, b = SwappedDataset(prepared, layout, plan, mode), SwappedDataset(dataset, layout, plan, mode)
        assert a.lengths == b.lengths
        for k in range(len(a)):
            x, y = a[k], b[k]
            assert x.num_tokens == a.lengths[k] and torch.equal(x.input_ids, y.input_ids)
            assert torch.equal(x.audio_frames, y.audio_frames) and torch.equal(x.audio_labels, y.audio_labels)
            assert all(torch.allclose(p, q, atol=1e-4) for p, q in zip(x.whisper_chunks, y.whisper_chunks, strict=True))


def _eval_config(assets, out: Path, *overrides: str, eval_manifest: Path | None = None):
    return make_config(
        assets, out, f"data.eval_manifest={eval_manifest or assets.manifest}", "monitor.generate_seconds=0",
        "monitor.decode_every=0", *overrides,
    )  # fmt: skip


@pytest.mark.parametrize("whisper", [True, False])
def test_a_trained_model_logs_finite_gains(assets, tmp_path: Path, whisper: bool) -> None:
    result = train(_eval_config(
        assets, tmp_path, "train.max_steps=2", "train.eval_every=2", f"whisper.enabled={str(whisper).lower()}",
    ))  # fmt: skip
    scalars = {k: v[2] for k, v in read_scalars(tmp_path / "tensorboard").items() if 2 in v}
    gains = {k: v for k, v in scalars.items() if k.startswith(GAIN) and not k.endswith("time_s")}
    partial = {f"{GAIN}_codes", f"{GAIN}_whisper"} if whisper else set()
    expected = {GAIN, *(f"{GAIN}_cb{k}" for k in range(4)), *partial}
    assert set(gains) == expected and all(math.isfinite(v) for v in gains.values())
    # every sample has a speaker: the true-reference loss is eval/loss itself, logged once
    assert "cloning/loss_true_ref" not in scalars
    true, swapped = scalars["eval/loss"], scalars["cloning/loss_swapped_ref"]
    assert true == pytest.approx(result.eval_losses[2]) and swapped != pytest.approx(true, abs=1e-6)
    assert scalars[GAIN] == pytest.approx(swapped - true, abs=1e-5)
    assert scalars[GAIN] == pytest.approx(sum(gains[f"{GAIN}_cb{k}"] for k in range(4)), abs=1e-4)


def _mask_the_reference(trainer: Trainer) -> None:
    """Make the model ignore its reference: every position between the first token and the target's user turn
    (system prompt, reference transcript, Whisper span, reference codes) is masked out of attention."""
    start_header = SpecialTokenIds.from_tokenizer(trainer.tokenizer).start_header

    def hook(_module, args, kwargs):
        mask = kwargs["attention_mask"].clone()
        for row in range(mask.shape[0]):
            target_turn = int((kwargs["input_ids"][row] == start_header).nonzero()[3])
            mask[row, 1:target_turn] = 0  # position 0 stays visible: no query attends to nothing
        return args, {**kwargs, "attention_mask": mask}

    trainer.engine.module.register_forward_pre_hook(hook, with_kwargs=True)


def test_a_model_that_ignores_its_reference_has_no_gain_and_the_check_warns(assets, tmp_path: Path) -> None:
    cfg = _eval_config(assets, tmp_path, "train.max_steps=3", "train.eval_every=1", "monitor.reference_ignored_after=2")
    control = Trainer(cfg.with_values({"train.output_dir": str(tmp_path / "control")}))
    control.train_step()
    values = control.evaluate()  # a model that sees its reference scores differently with another one...
    assert max(abs(values[k]) for k in (GAIN, f"{GAIN}_codes", f"{GAIN}_whisper")) > 1e-4

    trainer = Trainer(cfg)
    _mask_the_reference(trainer)
    result = trainer.fit()
    assert result.final_step == 3  # warn: the run goes on
    scalars = read_scalars(tmp_path / "tensorboard")  # ...one that cannot see it, the same up to rounding
    for key in (GAIN, f"{GAIN}_codes", f"{GAIN}_whisper"):
        assert sorted(scalars[key]) == [1, 2, 3] and all(abs(g) < 1e-5 for g in scalars[key].values()), key
    # a reference that changes nothing is found at every evaluation, before monitor.reference_ignored_after (2) too
    assert trainer.monitor.failures[HealthCheck.REFERENCE_IGNORED] == 3
    findings = [f for f in trainer.monitor.findings if f.check is HealthCheck.REFERENCE_IGNORED]
    assert [f.step for f in findings] == [1, 2, 3] and "cannot see its reference" in findings[0].render()


def test_reference_ignored_halts_after_halt_after_evaluations(assets, tmp_path: Path) -> None:
    cfg = _eval_config(
        assets, tmp_path, "train.max_steps=5", "train.eval_every=1", "monitor.reference_ignored_after=0",
        "monitor.on_reference_ignored=halt", "monitor.halt_after=2",
    )  # fmt: skip
    trainer = Trainer(cfg)
    _mask_the_reference(trainer)
    with pytest.raises(HealthError, match=r"\[health:reference_ignored\] step 2: swapping the reference") as err:
        trainer.fit()
    assert err.value.check is HealthCheck.REFERENCE_IGNORED and trainer.step == 2


def test_the_gain_and_its_check_are_skipped_on_a_one_speaker_eval_set(assets, tmp_path: Path, caplog) -> None:
    rows = [json.loads(line) for line in assets.manifest.open()]
    one = tmp_path / "one_speaker.jsonl"
    base = assets.manifest.parent
    one.write_text("".join(
        json.dumps({**r, "ref_audio": str(base / r["ref_audio"]), "audio": str(base / r["audio"])}) + "\n"
        for r in rows if r["speaker"] == "spk0"
    ))  # fmt: skip
    cfg = _eval_config(
        assets, tmp_path / "run", "train.max_steps=2", "train.eval_every=1", "monitor.reference_ignored_after=0",
        "monitor.on_reference_ignored=halt", "monitor.halt_after=1", eval_manifest=one,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ds_train"):
        trainer = Trainer(cfg)
        trainer.fit()  # halt_after=1 would stop at the first evaluation if the check ran
    skipped = [r.getMessage() for r in caplog.records if "conditioning gain: skipped" in r.getMessage()]
    assert skipped == ["conditioning gain: skipped on this set (1 speaker among the 12 samples with a speaker label; "
                       "a swap needs 2)"]  # fmt: skip
    assert trainer.monitor.failures[HealthCheck.REFERENCE_IGNORED] == 0
    assert not any(k.startswith("cloning/conditioning") for k in read_scalars(tmp_path / "run" / "tensorboard"))
