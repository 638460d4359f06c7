"""Row validation: every bad input becomes a RowError with a specific reason, on real files written here."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_pipeline.ingest import validation
from data_pipeline.ingest.validation import (
    Limits,
    RowError,
    check_codes,
    check_row_fields,
    check_text,
    load_checked_audio,
)

LIMITS = Limits()


def tone(seconds: float, sr: int, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    """A 220 Hz sine [S] or [S, channels], loud enough to pass the silence check."""
    t = np.arange(int(round(seconds * sr)), dtype=np.float32) / sr
    wave = (amp * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def write(path: Path, data: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def reject(path: Path, match: str, role: str = "target", limits: Limits = LIMITS, **kwargs: object) -> RowError:
    with pytest.raises(RowError, match=match) as info:
        load_checked_audio(path, limits, role, **kwargs)
    assert str(path) in info.value.reason
    return info.value


# ---- load_checked_audio: happy paths ----


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left = tone(2.0, 44100)
    stereo = np.stack([left, 0.5 * left], axis=1)
    wave, sr = load_checked_audio(write(tmp_path / "s.wav", stereo, 44100, "FLOAT"), LIMITS, "target")
    assert sr == 44100
    assert wave.dtype == torch.float32 and wave.shape == (88200,)
    torch.testing.assert_close(wave, torch.from_numpy(0.75 * left), atol=1e-6, rtol=0)


def test_resample_to_target_rate(tmp_path: Path) -> None:
    wave, sr = load_checked_audio(
        write(tmp_path / "r.flac", tone(2.0, 44100), 44100), LIMITS, "reference", target_sr=24000
    )
    assert sr == 24000 and wave.shape == (48000,) and wave.dtype == torch.float32


# ---- load_checked_audio: one test per bad file ----


def test_missing_file(tmp_path: Path) -> None:
    reject(tmp_path / "nope.wav", "file not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "clips.wav").mkdir()
    reject(tmp_path / "clips.wav", "is a directory")


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is definitely not audio\x00\xff" * 20)
    reject(path, "cannot read audio header")


def test_truncated_header(tmp_path: Path) -> None:
    good = write(tmp_path / "good.wav", tone(1.0, 16000), 16000).read_bytes()
    path = tmp_path / "truncated.wav"
    path.write_bytes(good[:20])  # cut inside the 'fmt ' chunk
    reject(path, "cannot read audio header")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    reject(path, "cannot read audio header")


def test_zero_length_audio(tmp_path: Path) -> None:
    reject(write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000), "zero-length audio")


def test_all_silent(tmp_path: Path) -> None:
    reject(write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000), "all-silent")


def test_near_silent_noise_is_silent(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).normal(0, 1e-5, 16000).astype(np.float32)  # about -100 dBFS
    reject(write(tmp_path / "hiss.wav", noise, 16000, "FLOAT"), "all-silent")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    data = tone(1.0, 16000)
    data[100] = bad
    reject(write(tmp_path / "nan.wav", data, 16000, "FLOAT"), "NaN or infinite")


def test_too_many_channels(tmp_path: Path) -> None:
    reject(write(tmp_path / "surround.wav", tone(1.0, 16000, channels=6), 16000), "unsupported channel layout: 6")


def test_too_short_target(tmp_path: Path) -> None:
    reject(write(tmp_path / "short.wav", tone(0.2, 16000), 16000), "target audio is 0.20 s, shorter than")


def test_too_long_target(tmp_path: Path) -> None:
    reject(write(tmp_path / "long.wav", tone(31.0, 8000), 8000), "target audio is 31.00 s, longer than")


def test_reference_uses_its_own_limits(tmp_path: Path) -> None:
    path = write(tmp_path / "ref.wav", tone(0.8, 16000), 16000)
    load_checked_audio(path, LIMITS, "target")  # 0.8 s is a fine target ...
    reject(path, "reference audio is 0.80 s, shorter than the minimum 1.00 s", role="reference")  # ... not a reference


@pytest.mark.parametrize("rate", [1, 400000])
def test_sample_rate_out_of_range(tmp_path: Path, rate: int) -> None:
    path = write(tmp_path / f"sr{rate}.wav", tone(2.0, rate) if rate < 1000 else tone(0.01, rate), rate)
    assert sf.info(str(path)).samplerate == rate  # soundfile writes these headers as asked
    reject(path, f"sample rate {rate} Hz outside")


def test_zero_sample_rate_header(tmp_path: Path) -> None:
    # libsndfile refuses to open a 0 Hz header, so it surfaces as unreadable rather than reaching the resampler.
    data = bytearray(write(tmp_path / "ok.wav", tone(1.0, 16000), 16000).read_bytes())
    data[24:32] = struct.pack("<II", 0, 0)  # fmt chunk: sample rate, byte rate
    path = tmp_path / "sr0.wav"
    path.write_bytes(bytes(data))
    reject(path, "cannot read audio header")


def test_resampler_failure_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
        raise RuntimeError("kernel too large")

    monkeypatch.setattr(validation, "resample", refuse)
    reject(
        write(tmp_path / "a.wav", tone(1.0, 16000), 16000), "cannot resample from 16000 Hz to 24000 Hz", target_sr=24000
    )


def test_bad_role_is_a_caller_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="role must be"):
        load_checked_audio(tmp_path / "x.wav", LIMITS, "prompt")


# ---- check_text ----


def test_check_text_strips() -> None:
    assert check_text("  hello there \n", "text", LIMITS) == "hello there"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "ref_text is empty"),
        (" \t\n ", "ref_text is empty"),
        (None, "expected a string, got null"),
        (42, "expected a string, got int"),
        ("x" * 1001, "1001 characters long, over the limit of 1000"),
        ("bad \ud800 text", "invalid Unicode"),
    ],
)
def test_check_text_rejects(value: object, match: str) -> None:
    with pytest.raises(RowError, match=match):
        check_text(value, "ref_text", LIMITS)


def test_check_text_limit_is_inclusive() -> None:
    assert len(check_text("x" * 1000, "text", LIMITS)) == 1000


# ---- check_codes ----


def test_check_codes_accepts_valid() -> None:
    check_codes(torch.randint(0, 1024, (8, 50)), 1024, 8, "target")
    check_codes(torch.full((8, 1), 1023, dtype=torch.int16), 1024, 8, "target")


@pytest.mark.parametrize(
    ("codes", "match"),
    [
        (torch.full((8, 5), -1), r"outside \[0, 1024\): min -1"),
        (torch.full((8, 5), 1024), r"outside \[0, 1024\): min 1024, max 1024"),
        (torch.zeros(8, 5), "dtype torch.float32, expected an integer"),
        (torch.zeros(8, 5, dtype=torch.bool), "dtype torch.bool"),
        (torch.zeros(8, 0, dtype=torch.long), "empty"),
        (torch.zeros(7, 5, dtype=torch.long), "7 codebooks, expected 8"),
        (torch.zeros(40, dtype=torch.long), r"shape \(40,\)"),
        ([[0, 1]], "must be a torch.Tensor"),
    ],
)
def test_check_codes_rejects(codes: torch.Tensor, match: str) -> None:
    with pytest.raises(RowError, match=match) as info:
        check_codes(codes, 1024, 8, "reference")
    assert info.value.reason.startswith("reference:")


# ---- check_row_fields ----

GOOD_ROW = {"id": "a1", "ref_audio": "r.wav", "ref_text": "hi", "audio": "t.wav", "text": "hello"}


def test_row_fields_accept() -> None:
    check_row_fields(GOOD_ROW)
    check_row_fields({**GOOD_ROW, "speaker": "s1", "language": None, "scene": "quiet room", "extra": 3})


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([GOOD_ROW], "not a JSON object .got list"),
        ("a string", "not a JSON object .got str"),
        ({k: v for k, v in GOOD_ROW.items() if k not in ("audio", "text")}, "missing fields: audio, text"),
        ({**GOOD_ROW, "audio": 3}, r"wrong type: audio \(int, expected string\)"),
        ({**GOOD_ROW, "ref_text": None}, r"ref_text \(null, expected string\)"),
        ({**GOOD_ROW, "speaker": 7}, r"speaker \(int, expected string or null\)"),
        ({**GOOD_ROW, "id": "  "}, "empty fields: id"),
    ],
)
def test_row_fields_reject(obj: object, match: str) -> None:
    with pytest.raises(RowError, match=match):
        check_row_fields(obj)


def test_row_fields_lists_every_problem() -> None:
    obj = {"id": "a1", "ref_audio": 1, "ref_text": "", "scene": ["x"]}
    with pytest.raises(RowError) as info:
        check_row_fields(obj)
    reason = info.value.reason
    assert reason.startswith("row 'a1': ")
    assert "missing fields: audio, text" in reason
    assert "ref_audio (int, expected string)" in reason and "scene (list, expected string or null)" in reason
    assert "empty fields: ref_text" in reason


def test_row_error_is_value_error() -> None:
    err = RowError("x: bad")
    assert isinstance(err, ValueError) and err.reason == "x: bad" and str(err) == "x: bad"


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_flac_and_ogg_decode(tmp_path: Path, fmt: str, subtype: str) -> None:
    sr = 24000
    t = np.arange(sr * 2) / sr
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(str(path), np.stack([wave, wave], axis=1), sr, format=fmt, subtype=subtype)
    mono, rate = load_checked_audio(path, Limits(), "target")
    assert rate == sr and mono.ndim == 1 and abs(mono.numel() - sr * 2) < 2048
    assert 0.15 < float(mono.pow(2).mean().sqrt()) < 0.25  # a 0.3-amplitude sine has RMS ~0.21
