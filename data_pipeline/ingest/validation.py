"""Per-row checks for offline data preparation.

Every check raises `RowError` with a reason that names the file (or field) and what is wrong, so the caller can turn any
failure into a manifest `Reject` without inspecting exception types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from data_pipeline.ingest.audio import AudioError, load_mono, resample
from data_pipeline.ingest.manifest import REQUIRED_FIELDS

OPTIONAL_FIELDS = ("speaker", "language", "scene")
ROLES = ("reference", "target")


@dataclass
class Limits:
    """Acceptance limits for one row; durations in seconds, rates in Hz."""

    min_seconds: float = 0.5  # target audio
    max_seconds: float = 30.0
    min_ref_seconds: float = 1.0
    max_ref_seconds: float = 30.0
    max_text_chars: int = 1000
    max_channels: int = 2  # more channels than this is an "unsupported channel layout"
    silence_dbfs: float = -60.0  # RMS below this over the whole file = all-silent
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000

    def duration_range(self, role: str) -> tuple[float, float]:
        """(min, max) seconds for "reference" or "target" audio."""
        if role == "reference":
            return self.min_ref_seconds, self.max_ref_seconds
        if role == "target":
            return self.min_seconds, self.max_seconds
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")


class RowError(ValueError):
    """A manifest row cannot be used; `reason` names the file or field and what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_text(text: object, field: str, limits: Limits) -> str:
    """Non-empty string of at most `limits.max_text_chars` characters (after stripping) -> the stripped text."""
    if not isinstance(text, str):
        raise RowError(f"{field}: expected a string, got {_type_name(text)}")
    stripped = text.strip()
    if not stripped:
        raise RowError(f"{field} is empty or whitespace-only")
    if len(stripped) > limits.max_text_chars:
        raise RowError(f"{field} is {len(stripped)} characters long, over the limit of {limits.max_text_chars}")
    try:
        # JSON "\ud800" escapes decode to lone surrogates, which the tokenizer cannot encode later.
        stripped.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RowError(f"{field} contains invalid Unicode at character {err.start} ({err.reason})") from err
    return stripped


def _check_header(path: Path, limits: Limits, role: str) -> None:
    """Reject on header information alone, so oversized or exotic files are never decoded."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile raises several types for corrupt input; all mean "unreadable"
        raise RowError(f"{path}: cannot read audio header ({err})") from err
    if info.channels < 1 or info.channels > limits.max_channels:
        raise RowError(
            f"{path}: unsupported channel layout: {info.channels} channels (at most {limits.max_channels} supported)"
        )
    if not limits.min_sample_rate <= info.samplerate <= limits.max_sample_rate:
        raise RowError(
            f"{path}: sample rate {info.samplerate} Hz outside [{limits.min_sample_rate}, {limits.max_sample_rate}] Hz"
        )
    if info.frames == 0:
        raise RowError(f"{path}: zero-length audio")
    _, max_s = limits.duration_range(role)
    # Only the upper bound here: a truncated data chunk can make the header overstate the length, never understate it.
    if info.frames / info.samplerate > max_s:
        raise RowError(
            f"{path}: {role} audio is {info.frames / info.samplerate:.2f} s, longer than the maximum {max_s:.2f} s"
        )


def load_checked_audio(
    path: str | Path, limits: Limits, role: str, *, target_sr: int | None = None
) -> tuple[torch.Tensor, int]:
    """Load and validate one audio file -> (mono float32 [S], sample rate).

    `role` ("reference" or "target") selects the duration limits. With `target_sr` the waveform is resampled and
    `target_sr` is returned. Any problem with the file raises RowError.
    """
    limits.duration_range(role)  # a bad role is a caller bug: let its ValueError through
    path = Path(path)
    try:
        is_dir, exists, is_file = path.is_dir(), path.exists(), path.is_file()
    except OSError as err:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
        raise RowError(f"{path}: cannot access the file ({err.strerror or err})") from None
    if is_dir:
        raise RowError(f"{path}: is a directory, not an audio file")
    if not exists:
        raise RowError(f"{path}: file not found")
    if not is_file:
        raise RowError(f"{path}: not a regular file")
    _check_header(path, limits, role)

    try:
        wave, sr = load_mono(path)
    except AudioError as err:
        raise RowError(str(err)) from err
    except Exception as err:  # e.g. MemoryError or a decoder failure past the header
        raise RowError(f"{path}: cannot decode audio ({type(err).__name__}: {err})") from err

    if wave.numel() == 0:
        raise RowError(f"{path}: zero-length audio")
    check_duration(path, wave.numel() / sr, limits, role)

    # float64 so that long, quiet files do not lose the tiny squares to rounding.
    rms = float(wave.double().square().mean().sqrt())
    dbfs = 20.0 * math.log10(rms) if rms > 0 else -math.inf
    if dbfs < limits.silence_dbfs:
        raise RowError(f"{path}: all-silent audio (RMS {dbfs:.1f} dBFS, threshold {limits.silence_dbfs:.1f} dBFS)")

    if target_sr is not None and target_sr != sr:
        try:
            wave = resample(wave, sr, target_sr)
        except Exception as err:
            raise RowError(f"{path}: cannot resample from {sr} Hz to {target_sr} Hz ({err})") from err
        sr = target_sr
    return wave.to(torch.float32).contiguous(), sr


def check_duration(path: str | Path, seconds: float, limits: Limits, role: str) -> None:
    """Raise RowError if `seconds` of audio is outside the duration limits of `role` ("reference" or "target")."""
    min_s, max_s = limits.duration_range(role)
    if seconds < min_s:
        raise RowError(f"{path}: {role} audio is {seconds:.2f} s, shorter than the minimum {min_s:.2f} s")
    if seconds > max_s:
        raise RowError(f"{path}: {role} audio is {seconds:.2f} s, longer than the maximum {max_s:.2f} s")


def check_codes(codes: torch.Tensor, codebook_size: int, num_codebooks: int, what: str) -> None:
    """Codec codes must be an integer tensor [num_codebooks, T], T > 0, every value in [0, codebook_size)."""
    if not isinstance(codes, torch.Tensor):
        raise RowError(f"{what}: codes must be a torch.Tensor, got {_type_name(codes)}")
    dtype = codes.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise RowError(f"{what}: codes have dtype {dtype}, expected an integer dtype")
    if codes.dim() != 2:
        raise RowError(f"{what}: codes have shape {tuple(codes.shape)}, expected [{num_codebooks}, T]")
    if codes.shape[0] != num_codebooks:
        raise RowError(f"{what}: codes have {codes.shape[0]} codebooks, expected {num_codebooks}")
    if codes.shape[1] == 0:
        raise RowError(f"{what}: codes are empty (0 frames)")
    wide = codes.to(torch.int64)  # min/max are not implemented for every unsigned dtype
    lo, hi = int(wide.min()), int(wide.max())
    if lo < 0 or hi >= codebook_size:
        bad = int(((wide < 0) | (wide >= codebook_size)).sum())
        raise RowError(f"{what}: {bad} codes outside [0, {codebook_size}): min {lo}, max {hi}")


def check_row_fields(obj: object) -> None:
    """A parsed manifest line: a dict with non-empty string id/ref_audio/ref_text/audio/text and optional
    speaker/language/scene that are strings or null. Every problem is listed in one RowError."""
    if not isinstance(obj, dict):
        raise RowError(f"row is not a JSON object (got {_type_name(obj)})")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    wrong = [
        f"{k} ({_type_name(obj[k])}, expected string)"
        for k in REQUIRED_FIELDS
        if k in obj and not isinstance(obj[k], str)
    ]
    wrong += [
        f"{k} ({_type_name(obj[k])}, expected string or null)"
        for k in OPTIONAL_FIELDS
        if obj.get(k) is not None and not isinstance(obj[k], str)
    ]
    empty = [k for k in REQUIRED_FIELDS if isinstance(obj.get(k), str) and not obj[k].strip()]
    problems = []
    if missing:
        problems.append(f"missing fields: {', '.join(missing)}")
    if wrong:
        problems.append(f"wrong type: {', '.join(wrong)}")
    if empty:
        problems.append(f"empty fields: {', '.join(empty)}")
    if problems:
        row_id = obj.get("id")
        prefix = f"row {row_id!r}: " if isinstance(row_id, str) and row_id.strip() else "row: "
        raise RowError(prefix + "; ".join(problems))
