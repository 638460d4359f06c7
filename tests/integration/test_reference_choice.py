"""References chosen per epoch (issue 14): `data.reference=same_speaker` gives each example, in each epoch, the
reference of a row of its own speaker, deterministically, never its own target audio, within the token budget the
sampler planned for; `fixed` keeps the prepared pairing."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from data_pipeline.layout import LayoutBuilder, LayoutOptions
from data_pipeline.prepared_dataset import PreparedDataset
from data_pipeline.reference_choice import ReferencePolicy, ReferencePool
from data_pipeline.text_tokens import build_tiny_tokenizer
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


def test_pool_is_per_speaker_seeded_and_filtered_by_duration() -> None:
    speakers = ["a", "a", "a", "b", "b", None]
    seconds = [2.0, 3.0, 40.0, 2.0, 5.0, 2.0]
    pool = ReferencePool(speakers, seconds, ReferencePolicy("same_speaker", 1.0, 30.0, seed=1))
    assert pool.candidates(0) == [0, 1] and pool.candidates(2) == [0, 1]  # row 2's 40 s reference is never offered
    assert pool.candidates(3) == [3, 4] and pool.candidates(5) == [5]  # no speaker: its own reference
    assert pool.order(0, 3) == pool.order(0, 3)  # a function of (seed, epoch, example) only
    assert {pool.order(0, e)[0] for e in range(20)} == {0, 1}
    fixed = ReferencePool(speakers, seconds, ReferencePolicy("fixed"))
    assert all(fixed.order(i, 5) == [i] for i in range(6))


def test_same_speaker_references_vary_per_epoch_within_the_planned_lengths(prepared_corpus: Path) -> None:
    fixed, varied = _dataset(prepared_corpus, "fixed"), _dataset(prepared_corpus, "same_speaker")
    assert not fixed.needs_epoch and varied.needs_epoch
    speakers = varied.speakers
    # each stored reference, as codes, -> the speaker of the row that holds it
    owner = {tuple(varied.row(j).ref_codes.flatten().tolist()): speakers[j] for j in range(len(varied))}
    seen: dict[int, set] = defaultdict(set)
    for epoch in range(EPOCHS):
        for i in range(len(varied)):
            example = varied[(i, epoch)]
            row = varied.row(i)
            assert example.num_tokens <= varied.lengths[i]  # the sampler's budget holds whatever is drawn
            ref_frames = example.audio_frames.shape[0] - (row.target_codes.shape[1] + 2 + row.target_codes.shape[0] - 1)
            ref = _ref_codes_of(example, ref_frames)
            assert owner[ref] == speakers[i]  # a reference of the same speaker
            assert ref != tuple(row.target_codes.flatten().tolist())  # never its own target
            seen[i].add(ref)
    assert varied[(3, 4)].input_ids.tolist() == varied[(3, 4)].input_ids.tolist()
    distinct = sorted(len(s) for s in seen.values())
    assert distinct[0] >= 2 and sum(distinct) / len(distinct) >= 4, distinct  # many references, not one
    assert all(f <= v for f, v in zip(fixed.lengths, varied.lengths, strict=True))
    assert all(fixed[i].input_ids.tolist() == fixed[(i, 5)].input_ids.tolist() for i in range(3))


def _ref_codes_of(example, ref_frames: int) -> tuple:
    from data_pipeline.delay_pattern import revert_delay

    return tuple(revert_delay(example.audio_frames[:ref_frames]).flatten().tolist())


def test_training_with_same_speaker_references(assets, prepared_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reference=same_speaker needs data.prepared"):
        load_run_config(None, ["data.reference=same_speaker", "data.manifest=m.jsonl"])
    trainer = Trainer(make_config(assets, tmp_path, f"data.prepared={prepared_corpus}", "data.reference=same_speaker",
                                  "data.max_tokens=3000", "train.max_steps=2", "train.tensorboard=false"))  # fmt: skip
    assert trainer.batches.sampler.with_epoch
    assert trainer.fit().final_step == 2
    assert trainer.monitor.dropped_samples == 0 and trainer.batches.bad_samples == 0
