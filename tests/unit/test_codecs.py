"""Both codec backends through the `Codec` protocol: code geometry, batching, decoding, resampling, save/load."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

from data_pipeline.codecs import (
    HIGGS_RATIOS,
    Codec,
    DacCodec,
    HiggsCodec,
    _higgs_hop_length,
    full_fp32_precision,
    load_codec,
    tiny_dac,
    tiny_higgs,
    tiny_higgs_config,
)
from data_pipeline.ingest.audio import resample
from data_pipeline.prepare.encode_rows import encode_by_length


@dataclass
class Backend:
    kind: str
    path: Path
    codec: Codec  # loaded from `path`
    fresh: Codec  # wraps the in-memory model that was saved to `path`


@pytest.fixture(scope="module", params=["dac", "higgs"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "dac":
        model, path = tiny_dac(seed=0), root / "tiny_dac.pth"
        model.save(str(path))
        return Backend("dac", path, load_codec("dac", path), DacCodec(model))
    model, path = tiny_higgs(seed=0), root / "tiny_higgs"
    model.save_pretrained(path)
    return Backend("higgs", path, load_codec("higgs", path), HiggsCodec(model))


def _speechlike(seconds: float, sample_rate: int, seed: int) -> torch.Tensor:
    """[round(seconds * sample_rate)] a gliding harmonic tone with noise, amplitude ~0.3."""
    n = round(seconds * sample_rate)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    f0 = 120 + 40 * seed + 30 * torch.sin(2 * math.pi * 1.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    wave = sum(torch.sin(k * phase) / k for k in range(1, 6)) * 0.2
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.02
    return (wave + noise).float()


def _check_codes(codec: Codec, codes: torch.Tensor, seconds: float) -> None:
    assert codes.dtype == torch.int64
    assert codes.shape == (codec.num_codebooks, math.ceil(seconds * codec.frame_rate - 1e-9))
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size


def test_geometry(backend: Backend) -> None:
    codec = backend.codec
    assert codec.sample_rate == 24000 and codec.frame_rate == 25.0
    assert codec.num_codebooks == (8 if backend.kind == "higgs" else 4)
    for seconds in (0.04, 1.0, 1.23):
        (codes,) = codec.encode([_speechlike(seconds, 24000, seed=1)], 24000)
        _check_codes(codec, codes, seconds)
    assert codec.encode([], 24000) == []


def test_batched_matches_single(backend: Backend) -> None:
    codec = backend.codec
    # Two utterances share a length so HiggsCodec batches them in one forward; DacCodec pads the 0.7 s one to 1.23 s.
    seconds = (1.23, 0.7, 1.23)
    waves = [_speechlike(s, 24000, seed=i) for i, s in enumerate(seconds)]
    batched = codec.encode(waves, 24000)
    for wave, codes, s in zip(waves, batched, seconds, strict=True):
        _check_codes(codec, codes, s)
        (single,) = codec.encode([wave], 24000)
        assert torch.equal(codes, single)
    # The codes vary with the input (a random-init codebook could otherwise map everything to one code).
    assert all(len(row.unique()) > 5 for row in batched[0])
    if isinstance(codec, DacCodec):  # the padding mask is gone after the call
        assert not any(conv._forward_hooks for conv in codec.model.encoder.modules())


def test_encode_by_length_groups_similar_lengths(backend: Backend) -> None:
    codec = backend.codec
    seconds = [1.5, 0.4, 1.2, 0.4, 2.0, 1.2, 0.9]
    waves = {(Path(f"u{i}.wav"), "target"): (_speechlike(s, 16000, seed=i), 16000) for i, s in enumerate(seconds)}
    seen: list[list[int]] = []
    encode = codec.encode

    def recording_encode(batch: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        seen.append([w.numel() for w in batch])
        return encode(batch, sample_rate)

    sizes: list[int] = []
    codec.encode = recording_encode
    try:
        codes = encode_by_length(waves, codec, batch_size=3, on_batch=sizes.append)
    finally:
        del codec.encode
    assert sizes == [3, 3, 1] and [n for batch in seen for n in batch] == sorted(n for batch in seen for n in batch)
    for key, (wave, sr) in waves.items():
        (single,) = codec.encode([wave], sr)
        assert torch.equal(codes[key], single)
    with pytest.raises(ValueError, match="batch size"):
        encode_by_length(waves, codec, batch_size=0)


def test_decode(backend: Backend) -> None:
    codec = backend.codec
    seconds = 1.5
    (codes,) = codec.encode([_speechlike(seconds, 24000, seed=2)], 24000)
    wave = codec.decode(codes)
    assert wave.dim() == 1 and wave.dtype == torch.float32
    assert torch.isfinite(wave).all()
    hop = codec.sample_rate / codec.frame_rate
    assert abs(wave.numel() - seconds * codec.sample_rate) <= hop


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_resamples_input(backend: Backend, sample_rate: int) -> None:
    codec = backend.codec
    seconds = 1.1
    wave = _speechlike(seconds, sample_rate, seed=3)
    (codes,) = codec.encode([wave], sample_rate)
    _check_codes(codec, codes, seconds)
    (at_24k,) = codec.encode([resample(wave, sample_rate, 24000)], 24000)
    assert torch.equal(codes, at_24k)


def test_save_load_round_trip(backend: Backend) -> None:
    waves = [_speechlike(s, 24000, seed=4 + i) for i, s in enumerate((0.9, 1.6))]
    for loaded, fresh in zip(backend.codec.encode(waves, 24000), backend.fresh.encode(waves, 24000), strict=True):
        assert torch.equal(loaded, fresh)


@pytest.fixture(scope="module")
def higgs_seed1() -> HiggsCodec:
    return HiggsCodec(tiny_higgs(seed=1))


def _model_encode(codec: HiggsCodec, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return codec.model.encode(wave.view(1, 1, -1), return_dict=False)[0]


@pytest.mark.parametrize("extra", [0, 1, 60, 500])
def test_higgs_codes_are_model_encode_codes_at_any_length(higgs_seed1: HiggsCodec, extra: int) -> None:
    """Lengths that are not a multiple of the hop take the model's half-hop padded acoustic path; right-padding to a
    whole frame skipped it and changed 9-40 % of the codes (and +60 samples gained a frame)."""
    codec, frames = higgs_seed1, 20
    length = frames * codec.hop_length + extra
    waves = [_speechlike(1.0, 24000, seed=i)[:length] for i in range(2)]
    waves.append(_speechlike(1.0, 24000, seed=2)[: length + 7])  # another odd length in the same call
    expected = [_model_encode(codec, w) for w in waves]
    assert expected[0].shape[-1] == frames + (extra >= codec.hop_length // 2)  # the model rounds, half up
    for wave, want in zip(waves, expected, strict=True):
        (single,) = codec.encode([wave], 24000)
        assert torch.equal(single, want)
    for got, want in zip(codec.encode(waves, 24000), expected, strict=True):  # batched: two share a forward
        assert torch.equal(got, want)


def test_higgs_too_short_to_encode_gives_one_frame(higgs_seed1: HiggsCodec) -> None:
    codec = higgs_seed1
    short = _speechlike(0.5, 24000, seed=3)[:50]
    with pytest.raises(RuntimeError):
        _model_encode(codec, short)  # the model's convolutions do not fit 50 samples
    padded = torch.nn.functional.pad(short, (0, codec.hop_length - 50))
    codes = codec.encode([short, torch.zeros(0), short[:40]], 24000)
    assert [tuple(c.shape) for c in codes] == [(codec.num_codebooks, 1)] * 3
    assert torch.equal(codes[0], _model_encode(codec, padded))


def _tiny_config(acoustic: dict | None = None, semantic: dict | None = None) -> HiggsAudioV2TokenizerConfig:
    config = tiny_higgs_config().to_dict()
    config["acoustic_model_config"].update(acoustic or {})
    config["semantic_model_config"].update(semantic or {})
    return HiggsAudioV2TokenizerConfig(**config)


@pytest.mark.parametrize(
    ("acoustic", "semantic", "message"),
    [
        # hop 1920 -> 12.5 frames/s
        ({"downsampling_ratios": [*HIGGS_RATIOS, 2], "upsampling_ratios": [*HIGGS_RATIOS, 2]}, None, "not an integer"),
        # Overriding only the encoder ratios keeps the decoder at the transformers default hop 320.
        ({"downsampling_ratios": list(HIGGS_RATIOS), "upsampling_ratios": [8, 5, 4, 2]}, None, "does not invert"),
        # A semantic model striding 640 samples at 16 kHz, kept every 2nd frame: 50 Hz vs 25 Hz acoustic.
        (None, {"conv_stride": [5, 2, 2, 2, 2, 2, 4]}, "semantic branch"),
    ],
)
def test_higgs_rejects_inconsistent_geometry(acoustic: dict | None, semantic: dict | None, message: str) -> None:
    model = HiggsAudioV2TokenizerModel(_tiny_config(acoustic, semantic))
    with pytest.raises(ValueError, match=message):
        HiggsCodec(model)


def test_higgs_default_config_geometry_is_rejected() -> None:
    # The transformers defaults (hop 320 at 24 kHz) do not map onto the 16 kHz semantic model's frames.
    with pytest.raises(ValueError, match="semantic"):
        _higgs_hop_length(HiggsAudioV2TokenizerConfig())


def test_load_codec_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_codec("higgs", tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        load_codec("dac", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown codec"):
        load_codec("encodec", tmp_path)


def test_encoding_runs_in_full_fp32_precision(backend: Backend) -> None:
    """TF32 (cuDNN's default for fp32 convolutions on recent GPUs) could change codes; encoding turns it off."""
    model = backend.codec.model
    encoder = model.encoder if backend.kind == "dac" else model.acoustic_encoder
    seen: list[bool] = []
    hook = encoder.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    try:
        backend.codec.encode([_speechlike(0.5, 24000, seed=3)], 24000)
    finally:
        hook.remove()
    assert seen == [False]
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with full_fp32_precision():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert torch.backends.cudnn.deterministic
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 == before[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def test_decoding_skips_onednn_and_gives_the_same_audio(backend: Backend) -> None:
    """Decoding runs the native CPU convolutions (oneDNN rebuilt its kernels for every new length, which made decoding
    generated audio the largest cost of an evaluation; benchmarks/eval_cost.py); the audio is oneDNN's within float
    rounding, and the global setting is left as it was."""
    model = backend.codec.model
    decoder = model.decoder if backend.kind == "dac" else model.acoustic_decoder
    seen: list[bool] = []
    hook = decoder.register_forward_pre_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
    (codes,) = backend.codec.encode([_speechlike(0.7, 24000, seed=4)], 24000)
    try:
        wave = backend.codec.decode(codes)
    finally:
        hook.remove()
    assert seen == [False] and torch.backends.mkldnn.enabled
    with torch.no_grad():
        if backend.kind == "dac":
            reference = model.decode(model.quantizer.from_codes(codes.unsqueeze(0))[0])[0, 0]
        else:
            reference = model.decode(codes.unsqueeze(0), return_dict=False)[0, 0]
    assert torch.allclose(wave, reference.float(), atol=1e-4, rtol=1e-4)
