"""The batch checks on real collated batches: each failure is found in its own row, named by sample id, and
`select_rows` keeps the other rows whole (their Whisper chunks with them)."""

from __future__ import annotations

import torch

from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import build_tiny_tokenizer
from data_pipeline.layout.whisper_features import WhisperLogMel, attach_features
from data_pipeline.loading.collator import VoiceCloningCollator, select_rows
from data_pipeline.types import IGNORE_INDEX, AudioGeometry
from ds_train.monitor.batch_checks import BatchRules, find_row_failures
from ds_train.monitor.health import HealthCheck

GEO = AudioGeometry(num_codebooks=4, codec_codebook_size=256)


def _examples(refs_16k: tuple[int, ...] = (16000, 16000 * 31, 4000)):
    builder = LayoutBuilder(build_tiny_tokenizer(), GEO, LayoutOptions(whisper=True))
    g = torch.Generator().manual_seed(0)
    exs = [
        builder.build(
            f"s{i}", "ref text", torch.randint(0, 256, (4, 3 + i), generator=g), "target text",
            torch.randint(0, 256, (4, 5), generator=g), ref_wave_16k=torch.randn(n, generator=g) * 0.1,
        )
        for i, n in enumerate(refs_16k)
    ]  # fmt: skip
    rules = BatchRules(GEO, len(builder.tokenizer), builder.ids.audio_in, True, 1e-4, 1e-3)
    return builder, exs, rules


def _found(batch: dict, rules: BatchRules) -> list[tuple[HealthCheck, str]]:
    return [(f.check, f.sample_id) for f in find_row_failures(batch, rules)]


def test_a_healthy_batch_passes_with_features_in_the_loader_or_on_the_device() -> None:
    builder, exs, rules = _examples()
    assert _found(VoiceCloningCollator(builder.ids.pad, GEO)(exs), rules) == []
    assert _found(VoiceCloningCollator(builder.ids.pad, GEO, whisper_on_device=True)(exs), rules) == []


def test_missing_reference_reaches_the_checks_instead_of_crashing_the_loader() -> None:
    """A row without its reference chunk is collated (a raise in a DataLoader worker would end the run); the checks
    name it, and only it. With every reference missing the features are the seed's [0, 128, 3000]."""
    builder, exs, rules = _examples()
    exs[1].whisper_chunks = []
    batch = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    assert 1 not in batch["whisper_chunk_sample"].tolist()
    failures = find_row_failures(batch, rules)
    assert [(f.check, f.sample_id) for f in failures] == [(HealthCheck.WHISPER_FEATURES, "s1")]
    assert "no reference chunk" in failures[0].reason
    for ex in exs:
        ex.whisper_chunks = []
    batch = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    assert tuple(batch["whisper_input_features"].shape) == (0, 128, 3000)
    assert [s for _, s in _found(batch, rules)] == ["s0", "s1", "s2"]


def test_a_silent_reference_is_found_on_the_waveform_and_on_the_features() -> None:
    """Log-mel of digital silence is a constant -1.5, not 0: judged by spread (features) or RMS (waveform)."""
    builder, exs, rules = _examples()
    exs[2].whisper_chunks = [torch.zeros_like(c) for c in exs[2].whisper_chunks]
    in_loader = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    silent = in_loader["whisper_input_features"][in_loader["whisper_chunk_sample"] == 2]
    assert torch.allclose(silent, torch.full_like(silent, -1.5))  # why an "all zeros" test never fired
    on_device = VoiceCloningCollator(builder.ids.pad, GEO, whisper_on_device=True)(exs)
    for batch in (in_loader, on_device):
        failures = find_row_failures(batch, rules)
        assert [(f.check, f.sample_id) for f in failures] == [(HealthCheck.WHISPER_FEATURES, "s2")]
        assert "silent" in failures[0].reason
    # speech at -60 dBFS is quiet, not silent
    exs[2].whisper_chunks = [torch.randn(c.numel()) * 1e-3 for c in exs[2].whisper_chunks]
    assert _found(VoiceCloningCollator(builder.ids.pad, GEO)(exs), rules) == []


def test_missing_reference_codes_missing_targets_and_out_of_range_ids() -> None:
    builder, exs, rules = _examples()
    batch = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    mask0 = batch["audio_input_ids_mask"][0]
    labelled = (batch["audio_labels"][0] != IGNORE_INDEX).any(-1)
    first_target = int(labelled.nonzero()[0])
    batch["audio_input_ids"][0, :first_target] = GEO.stream_eos  # the reference span carries no codes
    batch["audio_labels"][1] = IGNORE_INDEX  # nothing to learn from
    text = batch["attention_mask"][2].nonzero().flatten()
    batch["input_ids"][2, text[3]] = len(builder.tokenizer) + 7  # cannot be decoded (nor embedded, maybe)
    assert bool(mask0[:first_target].all())
    assert _found(batch, rules) == [
        (HealthCheck.REFERENCE_CODES, "s0"), (HealthCheck.CODEC_CODES, "s1"), (HealthCheck.DECODE_IDS, "s2"),
    ]  # fmt: skip
    batch = VoiceCloningCollator(builder.ids.pad, GEO)(exs)
    batch["audio_input_ids"][1, 2, 0] = GEO.model_codebook_size
    assert _found(batch, rules) == [(HealthCheck.DECODE_IDS, "s1")]


def test_select_rows_keeps_each_row_with_its_own_chunks() -> None:
    builder, exs, rules = _examples()
    for on_device in (False, True):
        batch = VoiceCloningCollator(builder.ids.pad, GEO, whisper_on_device=on_device)(exs)
        kept = select_rows(batch, [0, 2])
        alone = VoiceCloningCollator(builder.ids.pad, GEO, whisper_on_device=on_device)([exs[0], exs[2]])
        assert kept["sample_ids"] == ["s0", "s2"]
        assert kept["whisper_chunk_sample"].tolist() == [0, 1]  # s1's two 30 s chunks went with it
        if on_device:
            kept, alone = attach_features(kept, WhisperLogMel()), attach_features(alone, WhisperLogMel())
        for key, value in alone.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and key.startswith(("input", "attention", "label")):
                assert torch.equal(kept[key][:, : value.shape[1]], value), key
            elif isinstance(value, torch.Tensor) and key.startswith("whisper"):
                assert torch.allclose(kept[key].float(), value.float(), atol=1e-5), key
        assert _found(kept, rules) == []
