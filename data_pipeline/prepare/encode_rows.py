"""Manifest rows -> validated, codec-encoded rows: the one path shared by offline `prepare` and the in-memory dataset.

Every row ends up either as an `EncodedRow` or as a `Reject` naming the row and the reason. Each distinct audio file
is decoded and encoded once, and checked against the duration limits of each role it plays (a file may be one row's
reference and another's target). Files are encoded in length order, so a batch holds utterances of similar length:
DAC computes less padding, and the Higgs codec, which batches only equal padded lengths, finds more of them per forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data_pipeline.codecs import Codec
from data_pipeline.ingest.audio import resample
from data_pipeline.ingest.manifest import ManifestRow, Reject
from data_pipeline.ingest.validation import (
    Limits,
    RowError,
    check_codes,
    check_duration,
    check_text,
    load_checked_audio,
)
from data_pipeline.layout.whisper_features import WHISPER_SAMPLE_RATE
from data_pipeline.prepare.shards import EncodedRow
from data_pipeline.prepare.utterance_store import EncodedUtterance

AudioKey = tuple[Path, str]  # (file, "reference" | "target" | "" for the file itself)


def default_encode_batch(device: torch.device | str) -> int:
    """Files per codec call: 16 on a GPU, where a batch amortises kernel launches; 1 on a CPU, where one utterance
    already keeps the cores busy and a batch only spills the activations out of cache (docs/BENCHMARKS.md measures
    batched DAC encoding at 0.3-0.4x the one-at-a-time speed on CPU)."""
    return 16 if torch.device(device).type == "cuda" else 1


def encode_by_length(
    waves: dict[AudioKey, tuple[torch.Tensor, int]],
    codec: Codec,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[AudioKey, torch.Tensor]:
    """waves: key -> (mono [S], sample rate) -> key -> codes [C, T]. Batches of `batch_size` files, shortest first;
    `on_batch(n)` is called after each batch of n files. Each batch is resampled just before encoding."""
    if batch_size < 1:
        raise ValueError(f"encode batch size must be >= 1, got {batch_size}")
    order = sorted(waves, key=lambda k: (waves[k][0].numel() / waves[k][1], k))
    codes: dict[AudioKey, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = [resample(waves[k][0], waves[k][1], codec.sample_rate) for k in chunk]
        for key, c in zip(chunk, codec.encode(batch, codec.sample_rate), strict=True):
            codes[key] = c
        if on_batch is not None:
            on_batch(len(chunk))
    return codes


def _load_for_role(
    key: AudioKey, limits: Limits, decoded: dict[Path, tuple[torch.Tensor, int]]
) -> tuple[torch.Tensor, int] | RowError:
    """The checked (mono [S], sample rate) of file key[0] in role key[1], or the RowError saying why not. A file
    already decoded for the other role is only checked against this role's duration limits, not decoded again."""
    path, role = key
    try:
        if path in decoded:
            wave, sr = decoded[path]
            check_duration(path, wave.numel() / sr, limits, role)
            return wave, sr
        decoded[path] = load_checked_audio(path, limits, role)
        return decoded[path]
    except RowError as err:
        return err


def encode_rows(
    rows: list[ManifestRow],
    codec: Codec,
    limits: Limits,
    source: str,
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[EncodedRow], list[Reject]]:
    """-> (encoded rows in manifest order, rejects). `source` names the manifest in the rejects; `batch_size`
    defaults to `default_encode_batch(codec.device)`."""
    rejects: list[Reject] = []
    waves: dict[AudioKey, tuple[torch.Tensor, int] | RowError] = {}
    decoded: dict[Path, tuple[torch.Tensor, int]] = {}  # files that passed every role-independent check
    good: list[tuple[ManifestRow, str, str]] = []
    for row in rows:
        try:
            ref_text = check_text(row.ref_text, "ref_text", limits)
            text = check_text(row.text, "text", limits)
            for key in ((row.ref_audio, "reference"), (row.audio, "target")):
                if key not in waves:
                    waves[key] = _load_for_role(key, limits, decoded)
                if isinstance(waves[key], RowError):
                    raise waves[key]
            good.append((row, ref_text, text))
        except RowError as err:
            rejects.append(Reject(source, row.line, row.id, str(err)))
    loaded = {k: v for k, v in waves.items() if not isinstance(v, RowError)}
    # A file that is one row's reference and another's target is checked per role but encoded once.
    by_file = {(path, ""): wave for (path, _), wave in loaded.items()}
    file_codes = encode_by_length(by_file, codec, batch_size or default_encode_batch(codec.device), on_batch)
    codes = {key: file_codes[(key[0], "")] for key in loaded}
    encoded: list[EncodedRow] = []
    for row, ref_text, text in good:
        ref_key, tgt_key = (row.ref_audio, "reference"), (row.audio, "target")
        try:
            for key, what in ((ref_key, "reference"), (tgt_key, "target")):
                check_codes(codes[key], codec.codebook_size, codec.num_codebooks, f"{key[0]} ({what} codes)")
        except RowError as err:
            rejects.append(Reject(source, row.line, row.id, str(err)))
            continue
        (ref_wave, ref_sr), (tgt_wave, tgt_sr) = loaded[ref_key], loaded[tgt_key]
        encoded.append(EncodedRow(
            id=row.id, line=row.line, ref_text=ref_text, text=text, ref_codes=codes[ref_key],
            target_codes=codes[tgt_key], ref_pcm16k=resample(ref_wave, ref_sr, WHISPER_SAMPLE_RATE),
            ref_seconds=ref_wave.numel() / ref_sr, target_seconds=tgt_wave.numel() / tgt_sr,
            speaker=row.speaker, scene=row.scene,
        ))  # fmt: skip
    return encoded, rejects


@dataclass(frozen=True)
class AudioFile:
    """One distinct file of a manifest: its uid, the roles it plays, and whether its 16 kHz PCM is to be kept."""

    uid: int
    path: Path
    roles: frozenset[str]
    keep_pcm: bool


def _load_for_roles(file: AudioFile, limits: Limits) -> tuple[torch.Tensor, int]:
    """Load and check a file once for every role it plays: durations against the widest of those roles' limits (each
    example is checked against its own role's limits when the set is merged)."""
    if len(file.roles) == 1:
        return load_checked_audio(file.path, limits, next(iter(file.roles)))
    ranges = [limits.duration_range(role) for role in file.roles]
    widest = replace(limits, min_seconds=min(lo for lo, _ in ranges), max_seconds=max(hi for _, hi in ranges))
    return load_checked_audio(file.path, widest, "target")


def encode_utterances(
    files: list[AudioFile],
    codec: Codec,
    limits: Limits,
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[EncodedUtterance]:
    """Each file -> an `EncodedUtterance` (codes, sizes, PCM if kept) or one holding the reason it is unusable; in the
    order given. Files are encoded in length order, `batch_size` per codec call."""
    waves: dict[AudioKey, tuple[torch.Tensor, int]] = {}
    out: dict[int, EncodedUtterance] = {}
    for file in files:
        try:
            waves[(file.path, str(file.uid))] = _load_for_roles(file, limits)
        except RowError as err:
            out[file.uid] = EncodedUtterance(file.uid, None, 0.0, 0, error=str(err))
            if on_batch is not None:
                on_batch(1)
    codes = encode_by_length(waves, codec, batch_size or default_encode_batch(codec.device), on_batch)
    for file in files:
        key = (file.path, str(file.uid))
        if key not in waves:
            continue
        wave, sr = waves.pop(key)
        try:
            check_codes(codes[key], codec.codebook_size, codec.num_codebooks, f"{file.path} (codes)")
        except RowError as err:
            out[file.uid] = EncodedUtterance(file.uid, None, wave.numel() / sr, 0, error=str(err))
            continue
        seconds = wave.numel() / sr
        # Whisper's token count follows the 16 kHz length, kept or not; resample only what is stored.
        pcm = resample(wave, sr, WHISPER_SAMPLE_RATE) if file.keep_pcm else None
        samples16k = pcm.numel() if pcm is not None else math.ceil(wave.numel() * WHISPER_SAMPLE_RATE / sr)
        out[file.uid] = EncodedUtterance(file.uid, codes[key], seconds, samples16k, pcm)
    return [out[file.uid] for file in files]
