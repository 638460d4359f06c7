"""The training run: data, model, `deepspeed.initialize`, the loop, checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from data_pipeline.batching import TokenBudgetBatchSampler
from data_pipeline.codecs import Codec
from data_pipeline.collator import VoiceCloningCollator
from data_pipeline.dataset import EncodedVoiceCloningDataset
from data_pipeline.layout import IGNORE_INDEX, AudioGeometry, LayoutBuilder, LayoutOptions
from data_pipeline.prepared_dataset import PreparedDataset, read_prepared_meta
from data_pipeline.sampler import ResumableBatchSampler
from data_pipeline.text_tokens import SpecialTokenIds
from data_pipeline.whisper_features import WhisperLogMel, attach_features
from ds_train import checkpointing
from ds_train.build import build_codec, build_model, build_tokenizer
from ds_train.config import ConfigError, RunConfig, resolve_deepspeed_config
from ds_train.distributed import device_for, init_distributed
from ds_train.errors import CheckpointError
from ds_train.evaluation import Evaluator
from ds_train.flops import llm_flops_per_token, peak_flops
from ds_train.generate import generate_codes, prompt_from_batch
from ds_train.grad_norms import part_grad_norms
from ds_train.metrics import MetricsLogger
from ds_train.monitor import HealthError, HealthMonitor, apply_lr_floor
from ds_train.preflight import check_cpu_adam
from ds_train.sample_logger import SampleLogger
from ds_train.schedule import warmup_cosine

log = logging.getLogger("ds_train")
CHECKPOINT_SUBDIR = "checkpoints"


@dataclass
class TrainResult:
    output_dir: Path
    tensorboard_dir: Path
    checkpoint_dir: Path
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> mean loss over ranks and micro-batches
    grad_norms: dict[int, float] = field(default_factory=dict)
    lrs: dict[int, float] = field(default_factory=dict)
    eval_losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> eval/loss, when evaluated
    stopped_by: str | None = None  # "SIGTERM", "SIGINT" or "wall-time limit" when the run stopped early


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on the GPU (e.g. model.lora_dropout) draws from the current device's
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def features_on_device(cfg: RunConfig) -> bool:
    """Whether the training process computes Whisper features on its device (see `whisper.features_on`)."""
    where = cfg.whisper.features_on
    return where == "device" or (where == "auto" and torch.cuda.is_available())


@dataclass
class DataParts:
    dataset: Dataset
    eval_dataset: Dataset | None  # data.eval_manifest / data.eval_prepared, when set
    collator: VoiceCloningCollator
    codec: Codec


def _open_dataset(prepared: str | None, manifest: str | None, codec: Codec, layout: LayoutBuilder, rank: int):
    """A prepared dataset is read from its shards; a bare manifest is encoded in memory at start-up by every rank,
    which suits small corpora, eval sets and the demo."""
    if prepared:
        return PreparedDataset(prepared, layout)
    return EncodedVoiceCloningDataset(manifest, codec, layout, show_progress=rank == 0)


def _check_prepared_codec(prepared: str, key: str, codec: str, codec_path: str | None) -> None:
    """A prepared set's codes mean something only with the codec that made them: another codec kind is an error, other
    weights (a different file) a warning, since the same weights may live at another path on this machine."""
    meta = read_prepared_meta(prepared)
    if meta["codec"] != codec:
        raise ConfigError(
            f"{key} {prepared} was encoded with the {meta['codec']!r} codec but this run uses {codec!r}: "
            "prepare it with the same codec"
        )
    if codec_path and Path(meta["codec_path"]).resolve() != Path(codec_path).resolve():
        log.warning("%s %s was encoded with codec weights %s, this run loads %s: make sure they are the same weights",
                    key, prepared, meta["codec_path"], codec_path)  # fmt: skip


def build_data(cfg: RunConfig, tokenizer, rank: int) -> DataParts:
    """The training set (data.prepared or data.manifest), the optional eval set, the collator and the codec."""
    d = cfg.data
    if d.prepared and not d.codec_path:  # the codec the shards were encoded with
        meta = read_prepared_meta(d.prepared)
        d.codec, d.codec_path = meta["codec"], meta["codec_path"]
    for key, prepared in (("data.prepared", d.prepared), ("data.eval_prepared", d.eval_prepared)):
        if prepared:
            _check_prepared_codec(prepared, key, d.codec, d.codec_path)
    if not d.prepared and not d.manifest:
        raise ValueError("set data.prepared (a data_pipeline.prepare output) or data.manifest (a JSONL manifest)")
    codec = build_codec(cfg)
    geometry = AudioGeometry(codec.num_codebooks, codec.codebook_size)
    layout = build_layout(cfg, tokenizer, geometry)
    dataset = _open_dataset(d.prepared, d.manifest, codec, layout, rank)
    eval_dataset = None
    if d.eval_prepared or d.eval_manifest:
        eval_dataset = _open_dataset(d.eval_prepared, d.eval_manifest, codec, layout, rank)
    return DataParts(dataset, eval_dataset, build_collator(cfg, tokenizer, geometry), codec)


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


def build_sampler(cfg: RunConfig, dataset, rank: int, world_size: int):
    """Token-budget batches when data.max_tokens > 0, else fixed micro_batch_size; both resumable by position."""
    if cfg.data.max_tokens > 0:
        return TokenBudgetBatchSampler(dataset.lengths, cfg.data.max_tokens, rank, world_size, cfg.train.seed)
    return ResumableBatchSampler(len(dataset), cfg.data.micro_batch_size, rank, world_size, cfg.train.seed)


@dataclass
class StepStats:
    """What one optimizer step measured (averaged over micro-batches and ranks)."""

    step: int
    values: dict[str, float]


class Trainer:
    """Owns the DeepSpeed engine, the data iterator and the monitor. `setup()` builds everything, `train_step()` runs
    one optimizer step (gradient_accumulation_steps good micro-batches), `fit()` runs to `train.max_steps` with
    logging and checkpoints."""

    def __init__(self, cfg: RunConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.out_dir = Path(cfg.train.output_dir).resolve()
        self.ckpt_dir = self.out_dir / CHECKPOINT_SUBDIR
        self.tb_dir = self.out_dir / "tensorboard"
        self._monitor_state: dict | None = None  # monitor counters restored from a checkpoint
        self._sampler_state: dict | None = None  # the data position restored from a checkpoint
        self._told_no_generation = False
        self.best_eval_loss = math.inf  # lowest eval/loss so far (restored on resume)
        self.rows_seen = 0  # rows fetched by this rank, and how many of them failed to load
        self.bad_samples = 0

    def setup(self) -> Trainer:
        cfg, t = self.cfg, self.cfg.train
        self.rank, self.local_rank, self.world_size = init_distributed()
        self.ds_config = resolve_deepspeed_config(cfg, self.world_size)
        check_cpu_adam(self.ds_config, t.deepspeed_config)
        seed_everything(t.seed)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "run_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.tokenizer = build_tokenizer(cfg)
        data = build_data(cfg, self.tokenizer, self.rank)
        self.dataset, self.eval_dataset = data.dataset, data.eval_dataset
        self.collator, self.codec = data.collator, data.codec
        self.geometry = self.collator.geometry
        self.log_mel = WhisperLogMel()
        model = build_model(cfg, self.tokenizer, self.geometry)
        if self.rank == 0:
            self.tokenizer.save_pretrained(str(self.out_dir / "tokenizer"))
        if not any(p.requires_grad for p in model.parameters()):
            raise HealthError(
                f"[health:grad_norm] every parameter is frozen (model.freeze={cfg.model.freeze!r}, "
                f"whisper.trainable={cfg.whisper.trainable}): nothing can learn, the grad norm would be 0"
            )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=None if "scheduler" in self.ds_config else (
                lambda opt: warmup_cosine(opt, t.lr, t.min_lr, t.warmup_steps, t.max_steps)
            ),
        )  # fmt: skip
        self.device = device_for(self.local_rank)
        self.micro_batches = 0
        if self.resume:
            self._load_latest()
        self.lr_scheduled, self.lr_effective = apply_lr_floor(self.optimizer, t.min_lr)
        self.sampler = build_sampler(cfg, self.dataset, self.rank, self.world_size)
        self.sampler.consumed = self.micro_batches
        if self._sampler_state is not None:
            self.sampler.load_state_dict(self._sampler_state)
        workers = cfg.data.num_workers
        # Pinned host memory makes the non_blocking copy to the GPU asynchronous.
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=self.collator, num_workers=workers,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self._batches = iter(self.loader)
        self.monitor = HealthMonitor(cfg.monitor, cfg.whisper.enabled)
        if self._monitor_state:
            self.monitor.load_state_dict(self._monitor_state)
        self.metrics = MetricsLogger(self.tb_dir, enabled=self.rank == 0 and t.tensorboard)
        llm_cfg = self.engine.module.llm.config
        self.samples = SampleLogger(
            self.metrics.writer, self.tokenizer, self.codec, self.geometry,
            llm_cfg.audio_token_id, llm_cfg.audio_delay_token_id,
        )  # fmt: skip
        self.peak_flops = peak_flops()
        self.evaluator = None
        if self.eval_dataset is not None and t.eval_every > 0:
            self.evaluator = Evaluator(
                self.eval_dataset, self.collator, self.prepare_batch, self.geometry.num_codebooks,
                cfg.data.micro_batch_size, cfg.data.max_tokens, self.rank, self.world_size, self.device,
            )  # fmt: skip
        return self

    def prepare_batch(self, batch: dict) -> dict:
        """A collated batch on the training device, with the Whisper features computed there when they are."""
        return attach_features(_to_device(batch, self.device), self.log_mel)

    def evaluate(self) -> dict[str, float]:
        """eval/* scalars over the whole eval set (identical on every rank); needs data.eval_*."""
        if self.evaluator is None:
            raise ValueError("no eval set: set data.eval_manifest or data.eval_prepared (and train.eval_every > 0)")
        return self.evaluator.run(self.engine)

    def _load_latest(self) -> None:
        tag = checkpointing.latest_tag(self.ckpt_dir)
        if tag is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.ckpt_dir} (run without --resume to start fresh)")
        checkpointing.check_world_size(self.ckpt_dir, tag, self.world_size, self.ds_config)
        load_path, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        if load_path is None:
            raise CheckpointError(f"--resume: DeepSpeed could not load the latest checkpoint in {self.ckpt_dir}")
        self.micro_batches = int(client["micro_batches"])
        states = client["rng"]
        _set_rng_state(states[self.rank] if self.rank < len(states) else states[0])
        self._monitor_state = client.get("monitor")
        self._sampler_state = client.get("data_position")  # absent in older checkpoints: same rank count assumed
        self.best_eval_loss = float(client.get("best_eval_loss", math.inf))
        log.info("resumed from %s at step %d", load_path, self.engine.global_steps)

    @property
    def step(self) -> int:
        return self.engine.global_steps

    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        """Every rank must take the same branch, or the collectives of backward/step would hang."""
        flag = torch.isfinite(loss.detach()).all().float().cpu()
        if self.world_size > 1:
            flag = flag.to(self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def _count_bad_samples(self, bad: list, good: int) -> bool:
        """Log and count rows that failed to load; stop past data.max_bad_fraction. True if the batch is empty."""
        self.rows_seen += good + len(bad)
        self.bad_samples += len(bad)
        for sample in bad:
            log.warning("skipped sample %s: %s", sample.sample_id, sample.reason)
        fraction = self.bad_samples / max(1, self.rows_seen)
        if bad and self.rows_seen >= 100 and fraction > self.cfg.data.max_bad_fraction:
            raise RuntimeError(
                f"{self.bad_samples} of {self.rows_seen} rows failed to load ({fraction:.1%} > "
                f"data.max_bad_fraction={self.cfg.data.max_bad_fraction}); last: {bad[-1].sample_id}: {bad[-1].reason}"
            )
        return good == 0

    def train_step(self) -> StepStats:
        engine, num_codebooks, mon = self.engine, self.geometry.num_codebooks, self.cfg.monitor
        next_step = engine.global_steps + 1
        # ZeRO-0 fp32 keeps no global norm, so the per-part pass (which also yields the total) runs every step there.
        want_parts = (mon.part_norms_every > 0 and (next_step == 1 or next_step % mon.part_norms_every == 0)) or (
            engine.zero_optimization_stage() == 0 and not engine.bfloat16_enabled()
        )
        started = time.perf_counter()
        data_wait = 0.0
        # loss, audio loss, text loss, micro-batches, samples, labelled codebook-0 frames, then per codebook:
        # summed loss, correct, count
        head_size = 6
        sums = torch.zeros(head_size + 3 * num_codebooks, dtype=torch.float64)
        tokens = 0
        part_norms: dict[str, float] | None = None
        first: tuple[dict, object] | None = None
        attempts = 0
        while True:
            fetch = time.perf_counter()
            batch = next(self._batches)
            data_wait += time.perf_counter() - fetch
            if self._count_bad_samples(batch.pop("bad_samples", []), len(batch.get("sample_ids", ()))):
                continue  # the whole micro-batch failed to load
            batch = self.prepare_batch(batch)
            out = engine(**batch)
            self.monitor.observe_batch(batch, out)
            if not self._loss_is_finite(out.loss):
                self.monitor.observe_nonfinite_loss(batch, float(out.loss))
                attempts += 1
                if attempts > 10 * engine.gradient_accumulation_steps():
                    raise HealthError(f"step {next_step}: {attempts} micro-batches in a row had a non-finite loss")
                continue
            if not out.loss.requires_grad:
                raise HealthError(
                    f"[health:grad_norm] step {next_step}: the loss depends on no trainable parameter (every weight "
                    f"frozen, or the graph detached); nothing can learn. Check model/whisper freezing options."
                )
            first = first or (batch, out)
            engine.backward(out.loss)
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                part_norms = part_grad_norms(engine.module) if want_parts else None
                self.monitor.snapshot_params(engine.module, part_norms)
            engine.step()
            self.micro_batches += 1
            tokens += int(batch["attention_mask"].sum())
            labels = batch["audio_labels"]
            text_loss = 0.0 if out.text_loss is None else out.text_loss.item()
            head = torch.tensor(
                [out.loss.item(), out.audio_loss.item(), text_loss, 1.0, labels.shape[0],
                 (labels[..., 0] != IGNORE_INDEX).sum()],
                dtype=torch.float64,
            )  # fmt: skip
            per_codebook = [out.codebook_losses, out.codebook_correct, out.codebook_count]
            sums += torch.cat([head, *(t.double().cpu() for t in per_codebook)])
            if boundary:
                break
        ds_norm = engine.get_global_grad_norm()
        grad_norm = float(ds_norm) if ds_norm is not None else part_norms["total"]
        lr, lr_scheduled = self.lr_effective, self.lr_scheduled
        self.lr_scheduled, self.lr_effective = apply_lr_floor(self.optimizer, self.cfg.train.min_lr)
        step = engine.global_steps
        self.monitor.end_step(step, engine.module, grad_norm, lr_scheduled, lr)
        if self.world_size > 1:
            reduced = sums.to(self.device)  # NCCL reduces only CUDA tensors
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        step_time = time.perf_counter() - started
        n = float(sums[3])
        cb_loss, correct, count = sums[head_size:].view(3, num_codebooks)
        values = {
            "train/loss": float(sums[0]) / n,
            "train/audio_loss": float(sums[1]) / n,
            "train/audio_top1": float(correct.sum() / count.sum().clamp(min=1)),
            "train/grad_norm": grad_norm,
            "train/grad_clip": float(self.cfg.train.gradient_clipping),
            "train/lr": lr,
            "train/lr_scheduled": lr_scheduled,
            "perf/step_time_s": step_time,
            "perf/data_wait_frac": data_wait / step_time,
            "perf/tokens_per_s": tokens * self.world_size / step_time,
            "perf/samples_per_s": float(sums[4]) / step_time,
            "perf/audio_seconds_per_s": float(sums[5]) / self.codec.frame_rate / step_time,
            "perf/peak_memory_gib": peak_memory_gib(),
            "monitor/skipped_micro_batches": float(self.monitor.skipped_micro_batches),
            "monitor/bad_rows_skipped": float(len(self.dataset.rejects)),
            "monitor/bad_samples_skipped": float(self.bad_samples),
        }
        for k in range(num_codebooks):
            values[f"audio_codebook_top1/{k}"] = float(correct[k] / max(1.0, float(count[k])))
            values[f"audio_codebook_loss/{k}"] = float(cb_loss[k]) / n
        if self.cfg.model.text_head:
            values["train/text_loss"] = float(sums[2]) / n
        for part, value in (part_norms or {}).items():
            values[f"grad_norm_part/{part}"] = value
        if self.peak_flops:
            seq = tokens / max(1.0, float(sums[4]) / self.world_size)
            flops = llm_flops_per_token(engine.module, seq) * tokens * self.world_size
            values["perf/mfu"] = flops / step_time / (self.peak_flops * self.world_size)
        decode_every = mon.decode_every
        if self.rank == 0 and first is not None and decode_every > 0 and (step == 1 or step % decode_every == 0):
            self.samples.log(step, *first)
        return StepStats(step, values)

    def _log_generated(self, step: int, batch: dict) -> None:
        """Rank 0: free-running generation for the batch's first sample -> TensorBoard `eval_samples/generated`."""
        if self.engine.zero_optimization_stage() >= 3:
            if not self._told_no_generation:
                log.info("monitor.generate_seconds: skipped under ZeRO-3 (no rank holds every weight)")
                self._told_no_generation = True
            return
        llm_cfg, model = self.engine.module.llm.config, self.engine.module
        prompt = prompt_from_batch(
            batch, 0, self.samples.special.audio_out_bos, (llm_cfg.audio_token_id, llm_cfg.audio_delay_token_id)
        )
        max_frames = int(self.cfg.monitor.generate_seconds * self.codec.frame_rate) + self.geometry.num_codebooks + 1
        was_training = model.training
        try:
            codes = generate_codes(model, prompt, self.geometry, max_frames)
        except Exception as err:  # noqa: BLE001 - an observability extra must never stop training
            log.warning("eval generation at step %d failed and was skipped: %s: %s", step, type(err).__name__, err)
            return
        finally:
            model.train(was_training)
        self.samples.log_codes(step, "eval_samples/generated", codes)

    def improves_best(self, eval_loss: float) -> bool:
        """Record `eval_loss` if it beats every earlier evaluation (train.keep_best); True if it did."""
        if not self.cfg.train.keep_best or not math.isfinite(eval_loss) or eval_loss >= self.best_eval_loss:
            return False
        self.best_eval_loss = eval_loss
        return True

    def save(self, best: bool = False) -> str:
        """Checkpoint this step; `best` also points the checkpoints folder's `best` file at it."""
        states = [None] * self.world_size
        dist.all_gather_object(states, _rng_state())
        client = {
            "micro_batches": self.micro_batches,
            # epoch and global position, so a resume on another rank count continues the interrupted epoch
            "data_position": self.sampler.state_dict(self.micro_batches),
            "rng": states,
            "run_config": self.cfg.to_dict(),
            "monitor": self.monitor.state_dict(),
            "best_eval_loss": self.best_eval_loss,
            # lets `python -m deepspeed.checkpoint.ds_to_universal` convert this checkpoint for another rank count
            "universal_checkpoint_info": {"universal_checkpoint_version": 0.4},
        }
        meta = {
            "step": self.step,
            "world_size": self.world_size,
            "zero_stage": self.engine.zero_optimization_stage(),
            "bf16": self.engine.bfloat16_enabled(),
            "num_codebooks": self.geometry.num_codebooks,
            "codec_codebook_size": self.geometry.codec_codebook_size,
        }
        tag = checkpointing.save(self.engine, self.ckpt_dir, client, meta, self.cfg.train.keep_last, best)
        if self.cfg.train.debug_kill_after_step == self.step and self.rank == 0:
            log.warning("train.debug_kill_after_step=%d: killing rank 0 with SIGKILL", self.step)
            os.kill(os.getpid(), signal.SIGKILL)
        return tag

    def fit(self) -> TrainResult:
        t = self.cfg.train
        result = TrainResult(self.out_dir, self.tb_dir, self.ckpt_dir, self.step)
        if self.rank == 0:
            log.info(
                "training %d examples (%d rejected) on %d rank(s), device %s, ZeRO-%d, %s, step %d -> %d",
                len(self.dataset), len(self.dataset.rejects), self.world_size, self.device,
                self.engine.zero_optimization_stage(), "bf16" if self.engine.bfloat16_enabled() else "fp32",
                self.step, t.max_steps,
            )  # fmt: skip
        stopper = GracefulStop(t.max_wall_minutes)
        try:
            while self.step < t.max_steps:
                stats = self.train_step()
                step, values = stats.step, stats.values
                result.losses[step] = values["train/loss"]
                result.grad_norms[step] = values["train/grad_norm"]
                result.lrs[step] = values["train/lr"]
                if self.rank == 0:
                    self.metrics.scalars(step, values)
                    if step % t.log_every == 0 or step == 1 or step == t.max_steps:
                        self.metrics.console(step, t.max_steps, values)
                best = False
                if self.evaluator is not None and (step % t.eval_every == 0 or step == t.max_steps):
                    eval_values = self.evaluate()
                    values.update(eval_values)
                    result.eval_losses[step] = eval_values["eval/loss"]
                    best = self.improves_best(eval_values["eval/loss"])  # the same on every rank (reduced values)
                    if self.rank == 0:
                        self.metrics.scalars(step, eval_values)
                        self.metrics.console_eval(step, eval_values)
                        if self.evaluator.first_sample is not None and self.cfg.monitor.decode_every > 0:
                            self.samples.log(step, *self.evaluator.first_sample, prefix="eval_samples")
                        if self.evaluator.first_sample is not None and self.cfg.monitor.generate_seconds > 0:
                            self._log_generated(step, self.evaluator.first_sample[0])
                    self.evaluator.first_sample = None
                if self.engine.monitor.enabled:
                    # the DeepSpeed JSON's own monitors (csv, wandb, comet, tensorboard) get every metric too
                    self.engine.monitor.write_events([(f"ds_train/{k}", v, step) for k, v in values.items()])
                reason = stopper.agreed_reason(self.device)
                if step % t.save_every == 0 or step == t.max_steps or reason or best:
                    self.save(best=best)
                if reason:
                    log.warning("stopping at step %d (%s) after saving a checkpoint", step, reason)
                    result.stopped_by = reason
                    break
        finally:
            stopper.restore()
            self.metrics.close()
        result.final_step = self.step
        return result


class GracefulStop:
    """SIGTERM/SIGINT and the wall-time limit set a flag; the loop saves and stops at the end of the current step.
    Ranks agree through an all-reduce so every rank saves the same step (and none hangs in a collective)."""

    def __init__(self, max_wall_minutes: float) -> None:
        self.reason: str | None = None
        self.deadline = time.monotonic() + max_wall_minutes * 60 if max_wall_minutes > 0 else None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass

    def _handle(self, signum: int, frame) -> None:
        self.reason = signal.Signals(signum).name

    def agreed_reason(self, device: torch.device) -> str | None:
        if self.deadline is not None and time.monotonic() > self.deadline and self.reason is None:
            self.reason = "wall-time limit"
        codes = {None: 0, "wall-time limit": 1, "SIGTERM": 2, "SIGINT": 3}
        flag = torch.tensor(float(codes.get(self.reason, 2)), device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return {v: k for k, v in codes.items()}[int(flag.item())]

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def has_checkpoint(cfg: RunConfig) -> bool:
    return checkpointing.latest_tag(Path(cfg.train.output_dir).resolve() / CHECKPOINT_SUBDIR) is not None


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) the training the config describes; returns where logs and checkpoints are."""
    return Trainer(cfg, resume).setup().fit()
