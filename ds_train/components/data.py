"""The run's data, built from its config: datasets (a prepared set or a manifest encoded at start-up), the token
layout, the collator, the sampler, the DataLoader, and moving a batch to the training device. Training, evaluation,
generation and the doctor all build their data here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from data_pipeline.codecs import Codec
from data_pipeline.layout.builder import LayoutBuilder, LayoutOptions
from data_pipeline.layout.text_tokens import SpecialTokenIds
from data_pipeline.layout.whisper_features import WhisperLogMel, attach_features
from data_pipeline.loading.collator import VoiceCloningCollator
from data_pipeline.loading.dataset import EncodedVoiceCloningDataset
from data_pipeline.loading.prepared_dataset import PreparedDataset
from data_pipeline.loading.reference_choice import ReferencePolicy
from data_pipeline.loading.samplers import PositionalBatchSampler, ResumableBatchSampler, TokenBudgetBatchSampler
from data_pipeline.prepare.shards import read_prepared_meta
from data_pipeline.types import AudioGeometry
from ds_train.components.stopping import worker_init_fn
from ds_train.config import ConfigError, RunConfig
from ds_train.model.build import build_codec, check_model_geometry

log = logging.getLogger("ds_train")
DEFAULT_CODEC = "dac"  # for a manifest when data.codec is unset


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a batch on `device` (non-blocking: pinned host memory makes the copy asynchronous)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def features_on_device(cfg: RunConfig) -> bool:
    """Whether the training process computes Whisper features on its device (see `whisper.features_on`)."""
    where = cfg.whisper.features_on
    return where == "device" or (where == "auto" and torch.cuda.is_available())


class BatchPreparer:
    """A collated batch -> the same batch on the training device, with the Whisper features computed there when the
    collator left them to the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.log_mel = WhisperLogMel()

    def __call__(self, batch: dict) -> dict:
        return attach_features(to_device(batch, self.device), self.log_mel)


def check_data_files(cfg: RunConfig) -> None:
    """A manifest or codec file the config names but the disk lacks is a missing file naming its key (the readers
    further down only know the path)."""
    d = cfg.data
    used = {"data.manifest": None if d.prepared else d.manifest, "data.eval_manifest": d.eval_manifest,
            "data.codec_path": d.codec_path}  # fmt: skip
    for key, path in used.items():
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{key} {path} does not exist")


def resolve_codec(cfg: RunConfig) -> RunConfig:
    """The config with `data.codec` (and `data.codec_path`) settled: a prepared set's own codec, or "dac" for a
    manifest. A prepared set's codes mean something only with the codec that made them: an explicit `data.codec` of
    another kind is an error; other weights (a different file) a warning, since the same weights may live elsewhere."""
    d = cfg.data
    if not d.prepared and not d.manifest:
        raise ConfigError("set data.prepared (a data_pipeline.prepare output) or data.manifest (a JSONL manifest)")
    check_data_files(cfg)
    codec, codec_path = d.codec, d.codec_path
    if d.prepared:
        meta = read_prepared_meta(d.prepared)
        if codec is not None and codec != meta["codec"]:
            raise ConfigError(
                f"data.codec={codec} but data.prepared {d.prepared} was encoded with the {meta['codec']!r} codec: "
                f"drop data.codec (it is read from the prepared set) or prepare the data with {codec!r}"
            )
        codec = meta["codec"]
        codec_path = codec_path or meta["codec_path"]
    codec = codec or DEFAULT_CODEC
    for key, prepared in (("data.prepared", d.prepared), ("data.eval_prepared", d.eval_prepared)):
        if not prepared:
            continue
        meta = read_prepared_meta(prepared)
        if meta["codec"] != codec:
            raise ConfigError(
                f"{key} {prepared} was encoded with the {meta['codec']!r} codec but this run uses {codec!r}: "
                "prepare it with the same codec"
            )
        if codec_path and Path(meta["codec_path"]).resolve() != Path(codec_path).resolve():
            log.warning(
                "%s %s was encoded with codec weights %s, this run loads %s: make sure they are the same weights",
                key, prepared, meta["codec_path"], codec_path,
            )  # fmt: skip
    return cfg.with_values({"data.codec": codec, "data.codec_path": codec_path})


def build_layout(cfg: RunConfig, tokenizer, geometry: AudioGeometry) -> LayoutBuilder:
    """The token layout the run config asks for (Whisper span and turn, text labels)."""
    options = LayoutOptions(
        whisper=cfg.whisper.enabled, whisper_turn=cfg.whisper.placement, text_labels=cfg.model.text_head
    )
    return LayoutBuilder(tokenizer, geometry, options)


def build_collator(cfg: RunConfig, tokenizer, geometry: AudioGeometry) -> VoiceCloningCollator:
    return VoiceCloningCollator(
        pad_token_id=SpecialTokenIds.from_tokenizer(tokenizer).pad, geometry=geometry, whisper=cfg.whisper.enabled,
        whisper_on_device=features_on_device(cfg),
    )  # fmt: skip


def _open_dataset(
    prepared: str | None, manifest: str | None, codec: Codec, layout: LayoutBuilder, rank: int,
    reference: ReferencePolicy | None = None,
):  # fmt: skip
    """A prepared dataset is read from its shards; a bare manifest is encoded in memory at start-up by every rank,
    which suits small corpora, eval sets and the demo."""
    if prepared:
        return PreparedDataset(prepared, layout, reference)
    return EncodedVoiceCloningDataset(manifest, codec, layout, show_progress=rank == 0)


@dataclass(frozen=True)
class RunData:
    dataset: Dataset
    eval_dataset: Dataset | None  # data.eval_manifest / data.eval_prepared, when set
    layout: LayoutBuilder
    collator: VoiceCloningCollator
    codec: Codec

    @property
    def geometry(self) -> AudioGeometry:
        return self.collator.geometry


def build_run_data(cfg: RunConfig, tokenizer, rank: int) -> RunData:
    """The training set, the optional eval set, layout, collator and codec. `cfg` must be `resolve_codec`'s output."""
    d = cfg.data
    codec = build_codec(cfg)
    geometry = AudioGeometry(codec.num_codebooks, codec.codebook_size)
    check_model_geometry(cfg, geometry)  # before the manifests are encoded (minutes on a large one)
    layout = build_layout(cfg, tokenizer, geometry)
    reference = ReferencePolicy(d.reference, d.reference_min_seconds, d.reference_max_seconds, cfg.train.seed)
    dataset = _open_dataset(d.prepared, d.manifest, codec, layout, rank, reference)
    eval_dataset = None  # always the prepared pairing: evaluations stay comparable
    if d.eval_prepared or d.eval_manifest:
        eval_dataset = _open_dataset(d.eval_prepared, d.eval_manifest, codec, layout, rank)
    return RunData(dataset, eval_dataset, layout, build_collator(cfg, tokenizer, geometry), codec)


def build_sampler(cfg: RunConfig, dataset, rank: int, world_size: int) -> PositionalBatchSampler:
    """Token-budget batches when data.max_tokens > 0, else fixed micro_batch_size; both resumable by position."""
    per_epoch = getattr(dataset, "needs_epoch", False)
    if cfg.data.max_tokens > 0:
        # References drawn per epoch: pack each epoch on the real lengths of its pairs (the bounds only check fit).
        sampler = TokenBudgetBatchSampler(dataset.lengths, cfg.data.max_tokens, rank, world_size, cfg.train.seed,
                                          epoch_lengths=dataset.epoch_lengths if per_epoch else None)  # fmt: skip
    else:
        sampler = ResumableBatchSampler(len(dataset), cfg.data.micro_batch_size, rank, world_size, cfg.train.seed)
    sampler.with_epoch = per_epoch
    return sampler


def build_loader(dataset, sampler, collator, workers: int, device: torch.device) -> DataLoader:
    """Workers collate ahead of training and ignore stop signals from outside (their rank saves and stops them);
    pinned host memory makes the non-blocking copy to the GPU asynchronous."""
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collator, num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn if workers > 0 else None,
    )  # fmt: skip
