"""References chosen per epoch (issue 14): `data.reference=same_speaker` gives each example, in each epoch, another
stored utterance of its own speaker as reference, deterministically, never its own target audio, within the bounds the
sampler checks and exactly the lengths it packs; `fixed` keeps the prepared pairing."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_choice import KEEP_PREPARED, ReferenceDraws, ReferencePolicy
from data_pipeline.loading.samplers import TokenBudgetBatchSampler
from data_pipeline.types import AudioGeometry
from ds_train.config import ConfigError, load_run_config
from ds_train.trainer import Trainer
from tests.helpers import make_config

EPOCHS = 10


def _dataset(root: Path, mode: str) -> PreparedDataset:
    meta = json.loads((root / "dataset.json").read_text())
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(meta["num_codebooks"], meta["codebook_size"]),
                           LayoutOptions(whisper=True))  # fmt: skip
    return PreparedDataset(root, layout, ReferencePolicy(mode, 1.0, 30.0, seed=7))


def test_draws_are_per_speaker_seeded_filtered_by_duration_and_never_the_target() -> None:
    # examples: (speaker, target uid); donors: uids 10..15 with their speaker and duration
    speakers, targets = ["a", "a", "b", None, "c"], [10, 11, 13, 15, 16]
    donors = ([10, 11, 12, 13, 14, 15], ["a", "a", "a", "b", "b", None], [2.0, 3.0, 40.0, 2.0, 5.0, 2.0])
    draws = ReferenceDraws(speakers, targets, *donors, ReferencePolicy("same_speaker", 1.0, 30.0, seed=1))
    assert draws.candidates(0) == [11] and draws.candidates(1) == [10]  # uid 12 lasts 40 s: never offered
    assert draws.candidates(2) == [14] and draws.candidates(3) == [] and draws.candidates(4) == []
    by_epoch = [draws.epoch(e).tolist() for e in range(20)]
    assert all(d[:3] == [11, 10, 14] and d[3:] == [KEEP_PREPARED] * 2 for d in by_epoch)
    wide = ReferenceDraws(["a"] * 3, [10, 11, 12], [10, 11, 12, 13], ["a"] * 4, [2.0] * 4,
                          ReferencePolicy("same_speaker", seed=3))  # fmt: skip
    seen = [wide.epoch(e).tolist() for e in range(30)]
    assert all(d[i] != t for d in seen for i, t in enumerate([10, 11, 12]))  # never its own target
    assert {d[0] for d in seen} == {11, 12, 13}  # every other utterance comes up
    again = ReferenceDraws(["a"] * 3, [10, 11, 12], [10, 11, 12, 13], ["a"] * 4, [2.0] * 4,
                           ReferencePolicy("same_speaker", seed=3))  # fmt: skip
    assert [again.epoch(e).tolist() for e in range(30)] == seen  # a function of (seed, epoch) only


def test_same_speaker_references_vary_per_epoch_and_are_packed_on_their_real_lengths(prepared_corpus: Path) -> None:
    fixed, varied = _dataset(prepared_corpus, "fixed"), _dataset(prepared_corpus, "same_speaker")
    assert not fixed.needs_epoch and varied.needs_epoch
    speakers = varied.speakers
    speaker_of_uid = dict(zip(varied.utterances["uid"], varied.utterances["speaker"], strict=True))
    seen: dict[int, set] = defaultdict(set)
    for epoch in range(EPOCHS):
        planned = varied.epoch_lengths(epoch)
        for i in range(len(varied)):
            example = varied[(i, epoch)]
            uid = varied.reference_uid(i, epoch)
            assert example.num_tokens == planned[i] <= varied.lengths[i]  # packed on the real pair, within bounds
            assert speaker_of_uid[uid] == speakers[i]  # a reference of the same speaker
            assert uid != varied.index["target_uid"][i]  # never its own target
            row = varied.row(i)
            ref_frames = example.audio_frames.shape[0] - (row.target_codes.shape[1] + 2 + row.target_codes.shape[0] - 1)
            assert _ref_codes_of(example, ref_frames) != tuple(row.target_codes.flatten().tolist())
            seen[i].add(uid)
    assert varied[(3, 4)].input_ids.tolist() == varied[(3, 4)].input_ids.tolist()
    distinct = sorted(len(s) for s in seen.values())
    assert distinct[0] >= 2 and sum(distinct) / len(distinct) >= 3, distinct  # many references, not one
    assert all(f <= v for f, v in zip(fixed.lengths, varied.lengths, strict=True))
    assert all(fixed[i].input_ids.tolist() == fixed[(i, 5)].input_ids.tolist() for i in range(3))
    # The sampler packs each epoch on the drawn lengths: no batch of any epoch exceeds the budget as built.
    sampler = TokenBudgetBatchSampler(varied.lengths, 1500, seed=2, epoch_lengths=varied.epoch_lengths)
    for epoch in range(3):
        assert sampler.lengths_of(epoch).tolist() == varied.epoch_lengths(epoch) != varied.lengths
        for batch in sampler.epoch_batches(epoch):
            assert max(varied[(i, epoch)].num_tokens for i in batch) * len(batch) <= 1500


def _ref_codes_of(example, ref_frames: int) -> tuple:
    from data_pipeline.layout.delay_pattern import revert_delay

    return tuple(revert_delay(example.audio_frames[:ref_frames]).flatten().tolist())


def test_training_with_same_speaker_references(assets, prepared_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reference=same_speaker needs data.prepared"):
        load_run_config(None, ["data.reference=same_speaker", "data.manifest=m.jsonl"])
    trainer = Trainer(make_config(assets, tmp_path, f"data.prepared={prepared_corpus}", "data.reference=same_speaker",
                                  "data.max_tokens=3000", "train.max_steps=2", "train.tensorboard=false"))  # fmt: skip
    sampler, dataset = trainer.batches.sampler, trainer.data.dataset
    assert sampler.with_epoch and sampler.lengths_of(1).tolist() == dataset.epoch_lengths(1) != dataset.lengths
    assert trainer.fit().final_step == 2
    assert trainer.monitor.dropped_samples == 0 and trainer.batches.bad_samples == 0
