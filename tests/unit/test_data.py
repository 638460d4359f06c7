"""Manifest parsing, the dataset's rejects, and the resumable rank-disjoint sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_pipeline.ingest.manifest import read_manifest
from data_pipeline.layout.builder import LayoutBuilder
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.loading.dataset import EncodedVoiceCloningDataset
from data_pipeline.loading.samplers import (
    PositionalBatchSampler,
    ResumableBatchSampler,
    TokenBudgetBatchSampler,
    epoch_seed,
)
from data_pipeline.types import AudioGeometry
from ds_train.components.rng import rank_seed


def _write_manifest(tmp_path: Path, assets_manifest: Path) -> Path:
    good = [json.loads(line) for line in assets_manifest.read_text().splitlines()[:3]]
    base = assets_manifest.parent
    for row in good:
        row["ref_audio"], row["audio"] = str(base / row["ref_audio"]), str(base / row["audio"])
    sf.write(str(tmp_path / "silent_empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wav")
    lines = [json.dumps(r) for r in good] + [
        "{not json",
        json.dumps({"id": "no_text", "ref_audio": "a.wav", "ref_text": "x", "audio": "b.wav", "text": "  "}),
        json.dumps({**good[0], "id": "missing_file", "audio": "does_not_exist.wav"}),
        json.dumps({**good[0], "id": "corrupt", "audio": "corrupt.wav"}),
        json.dumps({**good[0], "id": "empty_audio", "audio": "silent_empty.wav"}),
        json.dumps(good[1]),
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_row_is_either_an_example_or_a_reject(assets, codec, tmp_path: Path) -> None:
    manifest = _write_manifest(tmp_path, assets.manifest)
    layout = LayoutBuilder(build_tiny_tokenizer(), AudioGeometry(codec.num_codebooks, codec.codebook_size))
    ds = EncodedVoiceCloningDataset(manifest, codec, layout, show_progress=False)
    assert len(ds) == 3
    reasons = {r.line: r.reason for r in ds.rejects}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9]
    assert "invalid JSON" in reasons[4]
    assert "text" in reasons[5]
    assert "file not found" in reasons[6]
    assert "corrupt.wav: cannot read audio header" in reasons[7]
    assert "zero-length" in reasons[8]
    assert "duplicate id" in reasons[9]
    ex = ds[0]
    assert ex.whisper_chunks and ex.whisper_chunks[0].numel() > 0
    assert ex.audio_frames.shape[1] == codec.num_codebooks


def test_manifest_relative_paths(tmp_path: Path) -> None:
    row = {"id": "a", "ref_audio": "r.wav", "ref_text": "r", "audio": "sub/t.wav", "text": "t"}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n\n")
    rows, rejects = read_manifest(tmp_path / "m.jsonl")
    assert not rejects and rows[0].audio == tmp_path / "sub" / "t.wav" and rows[0].line == 1


def test_sampler_is_deterministic_disjoint_and_resumable() -> None:
    ranks = [ResumableBatchSampler(50, 4, rank=r, world_size=2, seed=7) for r in range(2)]
    per_epoch = ranks[0].batches_per_epoch
    assert per_epoch == 6
    epoch0 = [[ranks[r].batch_at(i) for i in range(per_epoch)] for r in range(2)]
    flat = [i for r in range(2) for b in epoch0[r] for i in b]
    assert len(flat) == len(set(flat)) == 48  # no index twice within an epoch, across ranks
    assert ranks[0].batch_at(per_epoch) != ranks[0].batch_at(0)  # a new epoch reshuffles
    it = iter(ranks[0])
    first = [next(it) for _ in range(9)]
    resumed = ResumableBatchSampler(50, 4, rank=0, world_size=2, seed=7)
    resumed.load_state_dict({"consumed": 5, "seed": 7})
    it2 = iter(resumed)
    assert [next(it2) for _ in range(4)] == first[5:]
    assert torch.tensor(first[0]).unique().numel() == 4


def _make_sampler(kind: str, rank: int, world_size: int) -> PositionalBatchSampler:
    if kind == "fixed":
        return ResumableBatchSampler(97, 3, rank=rank, world_size=world_size, seed=5)
    lengths = [50 + (i * 37) % 400 for i in range(300)]
    # seed 6: epochs 1-3 pack at least as many micro-batches as epoch 0, so no position wraps around (a later epoch
    # that packs fewer repeats its first batches: see TokenBudgetBatchSampler.global_batch)
    return TokenBudgetBatchSampler(lengths, 1200, rank=rank, world_size=world_size, seed=6, bucket_batches=4)


@pytest.mark.parametrize("kind", ["fixed", "token_budget"])
@pytest.mark.parametrize(("before", "after"), [(2, 3), (4, 1), (3, 3)])
def test_resume_on_another_rank_count_continues_the_epoch(kind: str, before: int, after: int) -> None:
    """`before` ranks stop half way through epoch 1; `after` ranks resume from the saved position. Together they take
    each global micro-batch of epoch 1 at most once and skip fewer than `after` of its last ones; from epoch 2 on the
    resumed ranks take what a run on `after` ranks from the start would."""
    old = [_make_sampler(kind, r, before) for r in range(before)]
    per_epoch_old = old[0].batches_per_epoch
    done = per_epoch_old + per_epoch_old // 2
    for sampler in old:
        sampler.consumed = done
    saved = old[1 % before].state_dict()
    assert saved == old[0].state_dict()  # the position does not depend on the rank that saves it
    taken = [tuple(s.batch_at(k)) for s in old for k in range(per_epoch_old, done)]

    new = [_make_sampler(kind, r, after) for r in range(after)]
    for sampler in new:
        sampler.load_state_dict(saved)
    per_epoch_new = new[0].batches_per_epoch
    while new[0].position(new[0].consumed).epoch == 1:
        taken += [tuple(next(iter(s))) for s in new]
    epoch1 = [tuple(new[0].global_batch(1, p)) for p in range(per_epoch_new * after)]
    assert len(taken) == len(set(taken)) and set(taken) <= set(epoch1)
    assert len(epoch1) - len(taken) < after
    # From epoch 2 on: what a run on `after` ranks from the start takes.
    fresh = _make_sampler(kind, 0, after)
    assert [new[0].batch_at(new[0].consumed + k) for k in range(per_epoch_new)] == [
        fresh.batch_at(2 * per_epoch_new + k) for k in range(per_epoch_new)
    ]
    # The same rank count continues exactly as if never interrupted.
    if before == after:
        assert [new[0].batch_at(done + k) for k in range(2 * per_epoch_new)] == [
            old[0].batch_at(done + k) for k in range(2 * per_epoch_new)
        ]


def test_epoch_seeds_do_not_collide_across_seeds() -> None:
    """Issue 22 §3: the permutation seed was seed + epoch, so seed 0's epoch 1 was seed 1's epoch 0."""
    assert len({epoch_seed(s, e) for s in range(20) for e in range(20)}) == 400
    a, b = ResumableBatchSampler(64, 64, seed=0), ResumableBatchSampler(64, 64, seed=1)
    assert a.global_batch(1, 0) != b.global_batch(0, 0)
    lengths = [10 + i % 7 for i in range(64)]
    c, d = TokenBudgetBatchSampler(lengths, 60, seed=0), TokenBudgetBatchSampler(lengths, 60, seed=1)
    assert c.epoch_batches(1) != d.epoch_batches(0) and c.epoch_batches(1) == c.epoch_batches(1)


def test_rank_seeds_differ_per_rank_and_do_not_collide() -> None:
    seeds = {rank_seed(s, r) for s in range(16) for r in range(16)}
    assert len(seeds) == 256 and rank_seed(0, 1) != rank_seed(1, 0) and rank_seed(3, 2) == rank_seed(3, 2)
